"""docs/states.md and conveyor.job.TRANSITIONS describe the same state machine."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.job import TRANSITIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "states.md"


def test_the_documented_table_is_the_code_table() -> None:
    rows = re.findall(r"^\| (\(new\)|\w+) \| (\w+) \| (\w+) \|", DOC.read_text(), flags=re.M)
    documented = {(None if s == "(new)" else s, e, t) for s, e, t in rows if s != "from"}
    in_code = {(t.source.value if t.source else None, t.event.value, t.target.value) for t in TRANSITIONS}
    assert documented == in_code
