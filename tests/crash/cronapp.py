"""A periodic task for the multi-process scheduler test (URL from CONVEYOR_URL)."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()


@app.periodic(every=0.25, name="cron.quarter")
async def quarter() -> str:
    """Runs every 250 ms, whichever worker's scheduler gets there first."""
    return "tick"


@app.periodic("* * * * * *", name="cron.second")
async def second() -> str:
    """A cron schedule (croniter's sixth field is seconds): every second."""
    return "tick"
