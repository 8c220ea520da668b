"""An app for the CLI tests; its URL comes from CONVEYOR_URL."""

from conveyor import Conveyor

app = Conveyor(prefix="cli")


@app.task(name="cli.add")
def add(a: int, b: int = 0) -> int:
    return a + b


not_an_app = 42


@app.task(name="cli.collector")
def collector() -> list[int]:
    """The worker process's garbage-collector settings: first threshold, frozen objects."""
    import gc

    return [gc.get_threshold()[0], gc.get_freeze_count()]
