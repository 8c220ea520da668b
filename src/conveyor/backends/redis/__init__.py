"""The Redis engine (also Valkey): one Lua script per state change, pub/sub wake-ups."""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
