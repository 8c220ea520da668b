"""Periodic jobs without a leader: every worker may schedule, each tick yields one job."""

from conveyor.scheduler.cron import Schedule, Scheduler

__all__ = ["Schedule", "Scheduler"]
