"""`conveyor bench` runs every scenario and writes its JSON (here on the memory engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from conveyor import Conveyor
from conveyor.backends.base import JobQuery
from conveyor.bench import BACKLOG_SCENARIOS, SCENARIOS, Result, median_row, run_bench


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


def test_rounds_run_every_scenario_in_turn_and_report_medians(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    console = Console(record=True, width=200)
    scenarios = ["enqueue", "latency"]
    results = run_bench(url="memory://", jobs=100, processes=1, concurrency=20, scenarios=scenarios,
                        json_path=str(out), console=console, rounds=3)  # fmt: skip
    assert [r.scenario.split(" ")[0] for r in results] == ["enqueue", "latency"]
    saved = json.loads(out.read_text())
    labels = [r.scenario for r in results]
    assert [[r["scenario"] for r in round_] for round_ in saved["rounds"]] == [labels] * 3
    for row, index in zip(results, range(2), strict=True):
        rates = sorted(round_[index]["jobs_per_second"] for round_ in saved["rounds"])
        assert row.jobs_per_second == rates[1]
        assert row.note.startswith(f"median of 3: {rates[0]:,.0f}-{rates[2]:,.0f} jobs/s")
    assert "round 3 of 3" in console.export_text()


def test_a_median_row_takes_each_figure_s_median_and_keeps_the_notes() -> None:
    runs = [
        Result("drain", 100, 1.0, 100.0, 1.0, None, 9.0, None, "0.90 of nothing behind"),
        Result("drain", 100, 4.0, 25.0, 3.0, None, 5.0, 30.0),
        Result("drain", 100, 2.0, 50.0, 2.0, None, 7.0, 10.0, "1.10 of nothing behind"),
    ]
    row = median_row(runs)
    assert (row.scenario, row.jobs, row.seconds, row.jobs_per_second) == ("drain", 100, 2.0, 50.0)
    assert (row.p50_ms, row.p95_ms, row.p99_ms, row.server_us) == (2.0, None, 7.0, 20.0)
    assert row.note == "median of 3: 25-100 jobs/s; 0.90 of nothing behind; 1.10 of nothing behind"
    assert median_row(runs[:1]) is runs[0]
    same = [Result("io", 10, 1.0, 10.0, note="ideal 2,000/s")] * 2
    assert median_row(same).note == "median of 2: 10-10 jobs/s; ideal 2,000/s"


def test_rows_that_share_a_label_stay_apart(tmp_path: Path) -> None:
    """Both backlog scenarios have a "nothing behind" row: one round keeps both, and
    rounds match rows by place."""
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    results = run_bench(url=url, jobs=100, processes=1, concurrency=20, scenarios=list(BACKLOG_SCENARIOS),
                        json_path=None, console=Console(record=True, width=200), backlog=1_000)  # fmt: skip
    alone = [r for r in results if r.scenario.endswith("nothing behind")]
    assert len(alone) == 2 and not any(r.note.startswith("median of") for r in results)
