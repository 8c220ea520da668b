"""`conveyor demo`: a media pipeline on embedded SQLite, with live progress.

Each brief goes analysis -> asset prep -> a media-specific step (transcode a
video, resize images, transcribe audio) -> render. Some asset preps fail once
and are retried; one render keeps failing and ends dead. Each step enqueues
the next (flows will express this declaratively).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.context import current_job
from conveyor.job import Job, JobState

MEDIA = ("video", "image", "audio")
NEXT_STEP = {"video": "media.transcode", "image": "media.resize", "audio": "media.transcribe"}
STEPS = (
    "media.analyze",
    "media.prep_assets",
    "media.transcode",
    "media.resize",
    "media.transcribe",
    "media.render",
)
DOOMED = 7  # brief-07's render fails on every attempt and ends dead


def build_app(url: str) -> Conveyor:
    """The demo's app and its tasks."""
    app = Conveyor(url, prefix="demo", retry_backoff=0.3, retry_backoff_max=1.0)

    def follow(task: str, brief: str, media: str, *args: Any) -> None:
        app.ref(task).options(meta={"brief": brief, "media": media}).enqueue(brief, *args)

    async def work(seconds: float, steps: int = 5) -> None:
        for i in range(steps):
            await asyncio.sleep(seconds / steps)
            current_job().progress((i + 1) / steps)

    @app.task(name="media.analyze", queue="media")
    async def analyze(brief: str, media: str) -> dict[str, Any]:
        current_job().log("analysing brief", media=media)
        await work(random.uniform(0.2, 0.5))
        follow("media.prep_assets", brief, media, media)
        return {"scenes": random.randint(3, 12)}

    @app.task(name="media.prep_assets", queue="media", retries=3)
    def prep_assets(brief: str, media: str) -> int:
        time.sleep(random.uniform(0.1, 0.3))
        if int(brief[-2:]) % 4 == 1 and current_job().attempt == 1:
            raise ConnectionError("asset store timed out after 30s")
        follow(NEXT_STEP[media], brief, media)
        return random.randint(4, 40)

    @app.task(name="media.transcode", queue="media")
    async def transcode(brief: str) -> str:
        await work(random.uniform(0.4, 0.8), steps=8)
        follow("media.render", brief, "video")
        return f"s3://demo/{brief}/video-1080p.mp4"

    @app.task(name="media.resize", queue="media")
    async def resize(brief: str) -> list[str]:
        await work(random.uniform(0.2, 0.4))
        follow("media.render", brief, "image")
        return [f"s3://demo/{brief}/image-{w}.png" for w in (320, 1280)]

    @app.task(name="media.transcribe", queue="media")
    async def transcribe(brief: str) -> int:
        await work(random.uniform(0.3, 0.6))
        follow("media.render", brief, "audio")
        return random.randint(200, 2000)

    @app.task(name="media.render", queue="media", retries=2)
    def render(brief: str) -> str:
        time.sleep(random.uniform(0.2, 0.4))
        if int(brief[-2:]) == DOOMED:
            raise RuntimeError("font 'Brand Sans' is not installed on the render host")
        return f"https://cdn.example.com/{brief}.mp4"

    return app


def run_demo(*, briefs: int, url: str | None, console: Console) -> None:
    """Enqueue the briefs, run a worker in this process, and show the pipeline live."""
    if url is None:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='conveyor-demo-')) / 'demo.db'}"
    app = build_app(url)
    names = [f"brief-{i:02d}" for i in range(1, briefs + 1)]
    started = time.monotonic()
    analyze = app.ref("media.analyze")
    for i, brief in enumerate(names):
        media = MEDIA[i % len(MEDIA)]
        analyze.options(meta={"brief": brief, "media": media}).enqueue(brief, media)
    console.print(
        f"[bold]Conveyor demo[/]: {briefs} briefs through analysis -> asset prep -> "
        f"transcode/resize/transcribe -> render, on {url}"
    )
    worker = app.worker(queues=["media"], concurrency=8)
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    try:
        with Live(console=console, refresh_per_second=8) as live:
            while True:
                jobs = app.jobs(limit=10_000)
                live.update(_view(names, jobs, time.monotonic() - started))
                if _all_done(names, jobs):
                    break
                time.sleep(0.125)  # screen refresh rate, not synchronisation
    finally:
        worker.stop()
        thread.join(timeout=30)
    _summary(app, names, time.monotonic() - started, url, console)
    app.close()


def _latest(names: list[str], jobs: list[Job[Any]]) -> dict[str, Job[Any]]:
    latest: dict[str, Job[Any]] = {}
    for job in jobs:
        brief = job.meta.get("brief")
        if brief in names and (brief not in latest or int(job.id) > int(latest[brief].id)):
            latest[brief] = job
    return latest


def _all_done(names: list[str], jobs: list[Job[Any]]) -> bool:
    latest = _latest(names, jobs)
    return len(latest) == len(names) and all(
        j.state is JobState.DEAD or (j.task == "media.render" and j.state is JobState.COMPLETED)
        for j in latest.values()
    )


_COLOURS = {
    JobState.COMPLETED: "green",
    JobState.DEAD: "red",
    JobState.ACTIVE: "cyan",
    JobState.SCHEDULED: "yellow",
    JobState.QUEUED: "white",
}


def _view(names: list[str], jobs: list[Job[Any]], elapsed: float) -> Group:
    latest = _latest(names, jobs)
    table = Table(title=f"pipeline after {elapsed:.1f}s")
    for column in ("brief", "media", "step", "state", "attempt", "progress"):
        table.add_column(column)
    for brief in names:
        job = latest.get(brief)
        if job is None:
            table.add_row(brief, "", "", "", "", "")
            continue
        colour = _COLOURS.get(job.state, "white")
        bar = "#" * int((job.progress or 0) * 10)
        table.add_row(
            brief,
            str(job.meta.get("media")),
            job.task.split(".")[1],
            f"[{colour}]{job.state.value}[/]",
            f"{job.attempt}/{job.max_attempts}",
            f"{bar:<10}",
        )
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    line = "  ".join(f"{state}: {n}" for state, n in sorted(counts.items()))
    return Group(table, line)


def _summary(app: Conveyor, names: list[str], elapsed: float, url: str, console: Console) -> None:
    jobs = app.jobs(limit=10_000)
    table = Table(title=f"{len(names)} briefs in {elapsed:.1f}s: {len(jobs)} jobs")
    for column in ("step", "jobs", "completed", "failed attempts", "dead", "avg seconds"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in STEPS:
        mine = [j for j in jobs if j.task == step]
        if not mine:
            continue
        runs = [(j.finished_at or 0) - (j.started_at or 0) for j in mine if j.state is JobState.COMPLETED]
        table.add_row(
            step.split(".")[1],
            str(len(mine)),
            str(sum(j.state is JobState.COMPLETED for j in mine)),
            str(sum(len(j.attempts) for j in mine)),
            str(sum(j.state is JobState.DEAD for j in mine)),
            f"{sum(runs) / len(runs):.2f}" if runs else "-",
        )
    console.print(table)
    dead = [j for j in jobs if j.state is JobState.DEAD]
    for job in dead:
        console.print(
            f"[red]dead[/]: job {job.id} {job.task}({', '.join(map(str, job.args))}) after "
            f"{job.attempt} attempts: {job.error}"
        )
    console.print("\nExplore what happened:")
    console.print(f"  conveyor --url {url} --prefix demo status")
    console.print(f"  conveyor --url {url} --prefix demo jobs --state dead")
    if dead:
        console.print(f"  conveyor --url {url} --prefix demo jobs {dead[0].id}")
