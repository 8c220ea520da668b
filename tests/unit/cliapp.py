"""An app for the CLI tests; its URL comes from CONVEYOR_URL."""

from conveyor import Conveyor

app = Conveyor(prefix="cli")


@app.task(name="cli.add")
def add(a: int, b: int = 0) -> int:
    return a + b


not_an_app = 42
