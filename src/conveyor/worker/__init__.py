"""Workers: claim, run, renew leases, recover, shut down gracefully."""

from conveyor.worker.worker import Worker

__all__ = ["Worker"]
