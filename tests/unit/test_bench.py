"""`conveyor bench` runs every scenario and writes its JSON (here on the memory engine)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from conveyor.bench import SCENARIOS, run_bench


def test_bench_runs_every_scenario_in_process(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    console = Console(record=True, width=160)
    results = run_bench(url="memory://", jobs=300, processes=1, concurrency=50, scenarios=None,
                        json_path=str(out), console=console)  # fmt: skip
    assert len(results) == len(SCENARIOS)
    assert all(r.jobs_per_second > 0 for r in results)
    latency = next(r for r in results if r.scenario.startswith("latency"))
    assert latency.p50_ms is not None and latency.p99_ms is not None
    assert latency.p50_ms <= latency.p99_ms
    saved = json.loads(out.read_text())
    assert saved["url"] == "memory://" and len(saved["results"]) == len(SCENARIOS)
    assert "jobs/s" in console.export_text()
