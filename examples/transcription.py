"""Transcription that chains module generation when it completes.

`transcribe` runs first; the next step of the chain, `plan_modules`, receives the
transcript and fans out: it enqueues one `generate_module` job per module, with
`publish_course` as their parent, which runs once all of them are done and
reads their results in order. A task may enqueue a flow of its own: that is how
the number of modules can depend on what the transcription found.

    CONVEYOR_URL=sqlite:///course.db python -m examples.transcription s3://bucket/talk.mp3
    conveyor worker examples.transcription:app
"""

from __future__ import annotations

import sys
from typing import Any

from conveyor import Conveyor, Job, chain, current_job, flow

app = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db


@app.task(retries=3, timeout=1800)
async def transcribe(file_url: str) -> dict[str, Any]:
    current_job().progress(1.0)
    return {"file": file_url, "chapters": ["intro", "basics", "advanced"]}


@app.task
def plan_modules(transcript: dict[str, Any]) -> str:
    """Fan out one module job per chapter; returns the id of the job that publishes them."""
    children = [generate_module.s(transcript["file"], chapter) for chapter in transcript["chapters"]]
    return flow(parent=publish_course.s(transcript["file"]), children=children).enqueue().id


@app.task(retries=2)
def generate_module(file_url: str, chapter: str) -> dict[str, str]:
    return {"chapter": chapter, "quiz": f"quiz about {chapter}"}


@app.task
def publish_course(file_url: str) -> dict[str, Any]:
    modules = current_job().child_results()
    return {"file": file_url, "modules": [m["chapter"] for m in modules]}


def course(file_url: str) -> Job[str]:
    """Enqueue transcription and planning; the planning job's result is the publisher's id."""
    return chain(transcribe.s(file_url), plan_modules.s()).enqueue()


if __name__ == "__main__":
    print(f"enqueued; planning job {course(sys.argv[1]).id}")
