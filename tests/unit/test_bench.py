"""`conveyor bench` runs every scenario and writes its JSON (here on the memory engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from conveyor import Conveyor
from conveyor.backends.base import JobQuery
from conveyor.bench import BACKLOG_SCENARIOS, SCENARIOS, run_bench


def test_bench_runs_every_scenario_in_process(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    console = Console(record=True, width=160)
    results = run_bench(url="memory://", jobs=300, processes=1, concurrency=50, scenarios=None,
                        json_path=str(out), console=console)  # fmt: skip
    assert len(results) == len(SCENARIOS)
    assert all(r.jobs_per_second > 0 for r in results)
    assert all(r.server_us is None for r in results)  # the memory engine has no server
    bulk = next(r for r in results if r.scenario.startswith("enqueue_many"))
    assert bulk.jobs == 1_500  # 5 x --jobs
    latency = next(r for r in results if r.scenario.startswith("latency"))
    assert latency.p50_ms is not None and latency.p99_ms is not None
    assert latency.p50_ms <= latency.p99_ms
    saved = json.loads(out.read_text())
    assert saved["url"] == "memory://" and len(saved["results"]) == len(SCENARIOS)
    assert "jobs/s" in console.export_text()


def test_bench_deletes_the_jobs_it_made(tmp_path: Path) -> None:
    """A full run stores about 160,000 jobs, most never run: none stay on the engine."""
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    console = Console(record=True, width=160)
    scenarios = ["enqueue", "bulk", "drain"]
    results = run_bench(url=url, jobs=200, processes=1, concurrency=20, scenarios=scenarios,
                        json_path=None, console=console)  # fmt: skip
    assert [r.jobs for r in results] == [200, 1_000, 200]
    app = Conveyor(url, prefix="bench")
    try:
        assert app.backend.counts() == {}
        assert app.backend.list_jobs(JobQuery(limit=10)) == []
    finally:
        app.close()


@pytest.mark.parametrize("scenario", BACKLOG_SCENARIOS)
def test_a_backlog_scenario_compares_drains_with_and_without_it(tmp_path: Path, scenario: str) -> None:
    """Only when named; the drain with nothing behind brackets the backlog's (before and
    after); every job, the backlog's too, is gone afterwards."""
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    results = run_bench(url=url, jobs=200, processes=1, concurrency=20, scenarios=[scenario],
                        json_path=None, console=Console(record=True, width=200), backlog=1_000)  # fmt: skip
    *whole, alone, behind = results
    assert alone.jobs == behind.jobs == 400  # two drains of 200 each
    assert alone.scenario == "drain no-op async, 200, nothing behind"
    state = "queued behind" if scenario == "backlog_queued" else "finished in the store"
    assert behind.scenario == f"drain no-op async, 200, 1,000 {state}"
    assert alone.note.startswith("before the backlog ") and ", after " in alone.note
    ratio = behind.jobs_per_second / alone.jobs_per_second
    assert behind.note.startswith(f"{ratio:.2f} of nothing behind; runs ")
    if scenario == "backlog_finished":  # its backlog was run by a worker first: a row of its own
        assert [w.jobs for w in whole] == [1_000]
    else:
        assert whole == []
    app = Conveyor(url, prefix="bench")
    try:
        assert app.backend.counts() == {}
    finally:
        app.close()


def test_the_default_run_leaves_the_backlog_scenarios_out() -> None:
    assert not set(BACKLOG_SCENARIOS) & set(SCENARIOS)
