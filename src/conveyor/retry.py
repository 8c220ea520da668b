"""When a failed attempt runs again: exponential backoff with jitter."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retrying after failed attempt `attempt` (counting from 1).

    Equal jitter: half the exponential delay is fixed, half random, so retries
    spread out (no thundering herd) yet never come back near-instantly.
    """
    exponential: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return exponential / 2 + (rng or random).uniform(0, exponential / 2)
