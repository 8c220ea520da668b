"""A media pipeline as one chain: analysis -> asset_prep -> the media type's own step -> render.

The step in the middle is chosen per media type when the chain is built, so one
`pipeline()` call covers video, image and audio. The whole chain is stored
atomically; each step receives the previous step's result as its first argument.

    CONVEYOR_URL=sqlite:///media.db python -m examples.media_pipeline video clip-7
    conveyor worker examples.media_pipeline:app --queues media,render
"""

from __future__ import annotations

import sys
from typing import Any

from conveyor import Conveyor, Job, chain, current_job

app = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db


@app.task(queue="media", retries=2)
def analysis(media_id: str, media_type: str) -> dict[str, Any]:
    current_job().log("analysing", media_id=media_id)
    return {"media_id": media_id, "type": media_type, "duration": 42}


@app.task(queue="media")
def asset_prep(found: dict[str, Any]) -> dict[str, Any]:
    return {**found, "assets": [f"{found['media_id']}/source", f"{found['media_id']}/thumb"]}


@app.task(queue="media", timeout=600)
async def transcode_video(assets: dict[str, Any]) -> dict[str, Any]:
    return {**assets, "renditions": ["1080p", "720p"]}


@app.task(queue="media")
def resize_image(assets: dict[str, Any]) -> dict[str, Any]:
    return {**assets, "sizes": [2048, 1024, 256]}


@app.task(queue="media")
def normalize_audio(assets: dict[str, Any]) -> dict[str, Any]:
    return {**assets, "loudness": -14}


@app.task(queue="render")
def render(prepared: dict[str, Any]) -> str:
    done = sorted(set(prepared) - {"media_id", "type", "duration", "assets"})
    return f"rendered {prepared['type']} {prepared['media_id']} with {', '.join(done)}"


MEDIA_STEPS = {"video": transcode_video, "image": resize_image, "audio": normalize_audio}


def pipeline(media_id: str, media_type: str) -> Job[str]:
    """Enqueue the pipeline for one media file; returns the render job."""
    step = MEDIA_STEPS.get(media_type)
    if step is None:
        raise ValueError(f"unknown media type {media_type!r}; expected one of {', '.join(MEDIA_STEPS)}")
    return chain(analysis.s(media_id, media_type), asset_prep.s(), step.s(), render.s()).enqueue()


if __name__ == "__main__":
    job = pipeline(sys.argv[2], sys.argv[1])
    print(f"enqueued; render job {job.id} waits for its {len(job.record.children)} step(s) before it")
