"""How enqueue options resolve: job options over task defaults over app settings."""

from __future__ import annotations

from conveyor import Conveyor


def test_job_options_override_task_defaults_which_override_settings() -> None:
    app = Conveyor("memory://", retries=1)

    @app.task(queue="media", retries=4, priority=2)
    def render() -> None:
        return None

    plain = render.enqueue()
    assert (plain.queue, plain.max_attempts, plain.priority) == ("media", 5, 2)
    custom = render.options(queue="urgent", retries=0).enqueue()
    assert (custom.queue, custom.max_attempts, custom.priority) == ("urgent", 1, 2)
    by_name = app.enqueue("unknown.task")
    assert (by_name.queue, by_name.max_attempts) == ("default", 2)


def test_resolution_follows_configure_and_late_registration() -> None:
    app = Conveyor("memory://", retries=1)
    ref = app.ref("later.task")
    assert ref.enqueue().max_attempts == 2
    app.configure(retries=5)
    assert ref.enqueue().max_attempts == 6

    @app.task(name="later.task", retries=0, queue="late")
    def later() -> None:
        return None

    job = ref.enqueue()
    assert (job.max_attempts, job.queue) == (1, "late")


def test_delay_is_relative_to_each_enqueue() -> None:
    app = Conveyor("memory://")
    delayed = app.ref("x").options(delay=60)
    first = delayed.enqueue()
    second = delayed.enqueue()
    assert second.run_at - second.enqueued_at == first.run_at - first.enqueued_at == 60


def test_unique_for_and_debounce_are_validated_by_name() -> None:
    import pytest

    from conveyor import ConfigError

    app = Conveyor("memory://")

    @app.task
    def work(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="unique_for and debounce need a unique_key"):
        work.options(debounce=5).enqueue(1)
    with pytest.raises(ConfigError, match="debounce sets when the job runs"):
        work.options(unique_key="k", debounce=5, delay=1)
    with pytest.raises(ConfigError, match="option 'unique_for' must be a number of seconds > 0"):
        work.options(unique_key="k", unique_for=0)
    assert app.jobs() == []
