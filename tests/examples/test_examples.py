"""The examples in examples/ run as documented, on the embedded engines."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import running


@pytest.fixture(params=["memory", "sqlite"])
def load(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], ModuleType]]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'examples.db'}"
    monkeypatch.setenv("CONVEYOR_URL", url)
    loaded: list[ModuleType] = []

    def load_module(name: str) -> ModuleType:
        module = importlib.reload(importlib.import_module(f"examples.{name}"))  # a fresh app per test
        loaded.append(module)
        return module

    yield load_module
    for module in loaded:
        module.app.close()


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("video", "rendered video clip-1 with renditions"),
        ("image", "rendered image clip-1 with sizes"),
        ("audio", "rendered audio clip-1 with loudness"),
    ],
)
def test_the_media_pipeline_picks_the_step_for_each_media_type(
    load: Any, media_type: str, expected: str
) -> None:
    example = load("media_pipeline")
    job = example.pipeline("clip-1", media_type)
    with running(example.app, queues="media,render"):
        assert job.result(timeout=10) == expected


def test_an_unknown_media_type_is_refused_by_name(load: Any) -> None:
    example = load("media_pipeline")
    with pytest.raises(
        ValueError, match="unknown media type 'hologram'; expected one of video, image, audio"
    ):
        example.pipeline("clip-1", "hologram")
    assert example.app.jobs() == []


def test_transcription_chains_module_generation_then_publishes(load: Any) -> None:
    example = load("transcription")
    planning = example.course("s3://bucket/talk.mp3")
    with running(example.app, concurrency=3):
        publisher = example.app.get_job(planning.result(timeout=10))
        assert publisher.result(timeout=10) == {
            "file": "s3://bucket/talk.mp3",
            "modules": ["intro", "basics", "advanced"],
        }
