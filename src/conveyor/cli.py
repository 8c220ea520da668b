"""The `conveyor` command: worker, enqueue, status, jobs, retry, cancel, purge, migrate,
demo and bench. Errors print one line and exit non-zero, without a traceback."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.backends import redact_url
from conveyor.errors import ConveyorError, JobNotFound
from conveyor.job import Job, JobState
from conveyor.settings import LOG_LEVELS, LOOPS

console = Console()
STATES = [s.value for s in JobState]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


# -- helpers -----------------------------------------------------------------
def load_app(spec: str) -> Conveyor:
    """Import `module:attribute` (the current directory is importable) and return the app."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(
            f"{spec!r} must look like module:attribute, e.g. myapp:app", param_hint="APP"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise click.BadParameter(
                f"cannot import module {module_name!r} (run from the folder that holds it, "
                "or put it on PYTHONPATH)",
                param_hint="APP",
            ) from None
        raise click.ClickException(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise click.ClickException(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    app = getattr(module, attribute, None)
    if app is None:
        raise click.BadParameter(f"module {module_name!r} has no attribute {attribute!r}", param_hint="APP")
    if not isinstance(app, Conveyor):
        raise click.BadParameter(f"{spec!r} is a {type(app).__name__}, not a Conveyor app", param_hint="APP")
    return app


def _app(ctx: click.Context, spec: str | None = None) -> Conveyor:
    """The app named by APP / --app, else a bare app on --url; global --url/--prefix win."""
    options: dict[str, Any] = ctx.find_root().obj
    spec = spec or options.get("app")
    overrides = {k: options[k] for k in ("url", "prefix") if options.get(k)}
    if spec:
        app = load_app(spec)
        if overrides:
            app.configure(**overrides)
        return app
    return Conveyor(**overrides)


def _parse_arg(text: str) -> Any:
    """A CLI argument as JSON when it parses (42, true, "x", [1]), else as a plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 90, 30s, 15m, 2h or 7d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    if abs(seconds) < 90:
        return f"{seconds:.0f}s ago" if seconds >= 0 else f"in {-seconds:.0f}s"
    if abs(seconds) < 5400:
        return f"{seconds / 60:.0f}m ago" if seconds >= 0 else f"in {-seconds / 60:.0f}m"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )


# -- the group ---------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--url", envvar="CONVEYOR_URL", help="Engine URL (sqlite:///conveyor.db, memory://).")
@click.option("--prefix", envvar="CONVEYOR_PREFIX", help="Namespace for everything stored.")
@click.option(
    "--app",
    "app_spec",
    envvar="CONVEYOR_APP",
    help="module:attribute of the app, for URL and tasks.",
)
@click.option(
    "--log-level",
    envvar="CONVEYOR_LOG_LEVEL",
    default="INFO",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    show_default=True,
)
@click.version_option(package_name="conveyor")
@click.pass_context
def cli(
    ctx: click.Context, url: str | None, prefix: str | None, app_spec: str | None, log_level: str
) -> None:
    """Conveyor: background jobs for Python."""
    ctx.obj = {"url": url, "prefix": prefix, "app": app_spec, "log_level": log_level.upper()}
    _setup_logging(log_level.upper())


@cli.command()
@click.argument("app_spec", metavar="APP")
@click.option("-q", "--queues", envvar="CONVEYOR_QUEUES", help="Comma-separated, first drained first.")
@click.option(
    "-c", "--concurrency", envvar="CONVEYOR_CONCURRENCY", type=int, help="Jobs at once per process."
)
@click.option("-p", "--processes", envvar="CONVEYOR_PROCESSES", type=int, default=1, show_default=True)
@click.option("--burst", is_flag=True, help="Exit once no job is ready.")
@click.option("--job-timeout", envvar="CONVEYOR_JOB_TIMEOUT", type=float, help="Default seconds per attempt.")
@click.option("--retries", envvar="CONVEYOR_RETRIES", type=int, help="Default retries after a failure.")
@click.option("--retry-backoff", envvar="CONVEYOR_RETRY_BACKOFF", type=float, help="Backoff base, seconds.")
@click.option("--lease-timeout", envvar="CONVEYOR_LEASE_TIMEOUT", type=float, help="Seconds a lease lasts.")
@click.option("--heartbeat-interval", envvar="CONVEYOR_HEARTBEAT_INTERVAL", type=float)
@click.option(
    "--processors/--no-processors",
    envvar="CONVEYOR_PROCESSORS",
    default=None,
    help="Claim and run jobs (default: yes); --no-processors runs only schedules and upkeep.",
)
@click.option(
    "--scheduler/--no-scheduler",
    envvar="CONVEYOR_SCHEDULER",
    default=None,
    help="Run the app's periodic schedules in this worker (default: yes).",
)
@click.option(
    "--events/--no-events",
    envvar="CONVEYOR_EVENTS",
    default=None,
    help="Publish job events for app.events() and live views (default: yes).",
)
@click.option(
    "--loop",
    envvar="CONVEYOR_LOOP",
    type=click.Choice(LOOPS),
    help="Event loop (default: auto, uvloop where installed).",
)
@click.option(
    "--shutdown-grace",
    envvar="CONVEYOR_SHUTDOWN_GRACE",
    type=float,
    help="Seconds running jobs get to finish on SIGTERM.",
)
@click.option(
    "--start-timeout",
    envvar="CONVEYOR_START_TIMEOUT",
    metavar="S|none",
    help="Seconds to keep trying an unreachable engine at start (default 60; none: for ever).",
)
@click.pass_context
def worker(ctx: click.Context, /, app_spec: str, processes: int, burst: bool, **options: Any) -> None:
    """Run jobs of APP (module:attribute) from its queues."""
    app = _app(ctx, app_spec)
    settings = {k: v for k, v in options.items() if v is not None}
    worker_settings = app.settings.with_(**settings)  # validates before forking anything
    if processes < 1:
        raise click.BadParameter(f"must be >= 1, got {processes}", param_hint="--processes")
    if processes > 1:
        from conveyor.worker.supervisor import Supervisor, child_argv

        root = ctx.find_root().obj
        argv = [f"--log-level={root['log_level']}"]
        argv += [f"--{k}={root[k]}" for k in ("url", "prefix") if root.get(k)]
        argv += ["worker", app_spec]
        for key, value in settings.items():
            flag = key.replace("_", "-")
            argv.append(
                f"--{flag}" if value is True else f"--no-{flag}" if value is False else f"--{flag}={value}"
            )
        argv += ["--burst"] if burst else []
        code = Supervisor(child_argv(argv), processes).run()
        raise SystemExit(code)
    from conveyor.worker import Worker
    from conveyor.worker.collector import tune_collector
    from conveyor.worker.supervisor import follow_supervisor

    follow_supervisor()  # one of --processes N: stop if the supervisor dies
    tune_collector()  # this process is the worker's own
    code = Worker(app, worker_settings).run(burst=burst)
    if threading.active_count() > 1:
        # A sync task that ignored its timeout still holds a thread (and maybe its own
        # connection): exit without waiting for it or closing under it. Every change was
        # committed, so the engine loses nothing.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    app.close()
    raise SystemExit(code)


@cli.command()
@click.argument("app_spec", metavar="APP")
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object, e.g. '{\"n\": 2}'.")
@click.option("--queue")
@click.option("--priority", type=int)
@click.option("--delay", help="Run after this long: 30, 30s, 5m, 2h.")
@click.option("--unique-key")
@click.option("--retries", type=int)
@click.option("--timeout", type=float)
@click.option("--meta", "meta_json", help="Metadata as a JSON object.")
@click.option("--wait", type=float, help="Wait this many seconds for the result and print it.")
@click.pass_context
def enqueue(
    ctx: click.Context,
    /,
    app_spec: str,
    task: str,
    args: Sequence[str],
    kwargs_json: str | None,
    delay: str | None,
    meta_json: str | None,
    wait: float | None,
    **options: Any,
) -> None:
    """Enqueue TASK of APP; each ARG is read as JSON when it parses, else as text."""
    app = _app(ctx, app_spec)
    kwargs = _json_object(kwargs_json, "--kwargs")
    meta = _json_object(meta_json, "--meta")
    opts = {**options, "delay": _duration(delay) if delay else None, "meta": meta or None}
    job = app.ref(task).options(**opts).enqueue(*[_parse_arg(a) for a in args], **kwargs)
    console.print(f"enqueued job [bold]{job.id}[/] ({job.task}) on queue {job.queue}: {job.state.value}")
    if wait is not None:
        console.print_json(data=job.result(timeout=wait))


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Jobs per queue and state, and the workers seen in the last minute."""
    app = _app(ctx)
    stats = app.stats()
    table = Table(title=f"Conveyor at {redact_url(app.settings.url)} (prefix {app.settings.prefix})")
    table.add_column("queue")
    for state in STATES:
        table.add_column(state, justify="right")
    for queue, per in stats["queues"].items():
        name = f"{queue} [yellow](paused)[/]" if queue in stats["paused"] else queue
        table.add_row(name, *(str(per[s]) for s in STATES))
    table.add_row("[bold]total[/]", *(f"[bold]{stats['totals'][s]}[/]" for s in STATES))
    console.print(table)
    workers = app.backend.workers()
    if workers:
        wt = Table(title="Workers")
        for column in ("id", "queues", "concurrency", "active", "processed", "last seen"):
            wt.add_column(column)
        for w in workers:
            wt.add_row(
                w.id,
                ",".join(w.queues),
                str(w.concurrency),
                str(w.active),
                str(w.processed),
                _ago(w.last_seen),
            )
        console.print(wt)
    else:
        console.print("no workers seen in the last minute")


@cli.command()
@click.argument("job_id", required=False)
@click.option("--queue")
@click.option("--state", type=click.Choice(STATES))
@click.option("--task")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def jobs(
    ctx: click.Context,
    job_id: str | None,
    queue: str | None,
    state: str | None,
    task: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List jobs (newest first), or show JOB_ID's whole story."""
    app = _app(ctx)
    if job_id is not None:
        _show_job(app.get_job(job_id), as_json)
        return
    found = app.jobs(queue=queue, state=state, task=task, limit=limit, offset=offset)
    if as_json:
        console.print_json(data=[_job_dict(j) for j in found])
        return
    table = Table()
    for column in ("id", "task", "queue", "state", "attempt", "enqueued", "error"):
        table.add_column(column)
    for j in found:
        error = (j.error or "")[:60]
        table.add_row(
            j.id,
            j.task,
            j.queue,
            j.state.value,
            f"{j.attempt}/{j.max_attempts}",
            _ago(j.enqueued_at),
            error,
        )
    console.print(table)


def _job_dict(job: Job[Any]) -> dict[str, Any]:
    r = job.record
    return {
        "id": r.id,
        "task": r.task,
        "queue": r.queue,
        "state": r.state.value,
        "priority": r.priority,
        "attempt": r.attempt,
        "max_attempts": r.max_attempts,
        "args": job.args,
        "kwargs": job.kwargs,
        "meta": r.meta,
        "unique_key": r.unique_key,
        "enqueued_at": r.enqueued_at,
        "run_at": r.run_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "progress": r.progress,
        "result": json.loads(r.result) if r.result else None,
        "error": r.error,
        "attempts": [vars_of(a) for a in r.attempts],
    }


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _show_job(job: Job[Any], as_json: bool) -> None:
    data = _job_dict(job)
    data["logs"] = [vars_of(entry) for entry in job.logs()]
    if as_json:
        console.print_json(data=data)
        return
    console.print(f"[bold]job {job.id}[/]  {job.task}  [bold]{job.state.value}[/]")
    for key in ("queue", "priority", "attempt", "max_attempts", "unique_key", "progress", "error"):
        console.print(f"  {key:13} {data[key]}")
    for key in ("enqueued_at", "run_at", "started_at", "finished_at"):
        console.print(f"  {key:13} {_ago(data[key])}")
    console.print(f"  {'args':13} {json.dumps(data['args'])}")
    console.print(f"  {'kwargs':13} {json.dumps(data['kwargs'])}")
    console.print(f"  {'meta':13} {json.dumps(data['meta'])}")
    if job.state is JobState.COMPLETED:
        console.print(f"  {'result':13} {json.dumps(data['result'])}")
    for attempt in job.attempts:
        when, where = _ago(attempt.finished_at), attempt.worker
        console.print(f"[bold red]attempt {attempt.attempt} failed[/] {when} on {where}: {attempt.error}")
        if attempt.traceback:
            console.print(attempt.traceback.rstrip(), markup=False, highlight=False)
    for entry in data["logs"]:
        fields = " ".join(f"{k}={v}" for k, v in entry["fields"].items())
        console.print(f"  log {_ago(entry['at'])}: {entry['message']} {fields}", markup=False)


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Retry every dead job (of --queue, if given).")
@click.option("--queue")
@click.pass_context
def retry(ctx: click.Context, job_ids: Sequence[str], all_dead: bool, queue: str | None) -> None:
    """Run dead or cancelled jobs again, with a fresh retry budget."""
    app = _app(ctx)
    ids = list(job_ids)
    if all_dead:
        ids += [j.id for j in app.jobs(queue=queue, state=JobState.DEAD, limit=100_000)]
    if not ids:
        raise click.UsageError("give job ids, or --all-dead")
    done = app.retry(*ids)
    for job_id, ok in zip(ids, done, strict=True):
        if not ok:
            console.print(
                f"job {job_id}: not retried (unknown, not dead/cancelled, or its unique key is taken)"
            )
    console.print(f"requeued {sum(done)} of {len(ids)} job(s)")
    if not any(done):
        raise SystemExit(1)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_context
def cancel(ctx: click.Context, job_ids: Sequence[str]) -> None:
    """Cancel jobs that have not finished; a cancelled job never starts again."""
    _summed_up(job_ids, _app(ctx).cancel(*job_ids), "cancelled", "unknown or already finished")


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def delete(ctx: click.Context, job_ids: Sequence[str], yes: bool) -> None:
    """Delete jobs and their logs, whatever their state; an unfinished one is cancelled first."""
    app = _app(ctx)
    if not yes:
        click.confirm(f"delete {len(job_ids)} job(s) and their logs?", abort=True)
    _summed_up(job_ids, app.delete(*job_ids), "deleted", "unknown")


def _summed_up(job_ids: Sequence[str], done: Sequence[bool], verb: str, why: str) -> None:
    """A line for each job the command left alone, the count it acted on, and exit
    status 1 when that is none."""
    for job_id, ok in zip(job_ids, done, strict=True):
        if not ok:
            console.print(f"job {job_id}: not {verb} ({why})")
    console.print(f"{verb} {sum(done)} of {len(job_ids)} job(s)")
    if not any(done):
        raise SystemExit(1)


@cli.command()
@click.option("--queue")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["completed", "dead", "cancelled"]),
    help="Repeatable; default: all three.",
)
@click.option("--older-than", help="Only jobs finished longer ago than this: 90s, 15m, 2h, 7d.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(
    ctx: click.Context, queue: str | None, states: Sequence[str], older_than: str | None, yes: bool
) -> None:
    """Delete finished jobs and their logs."""
    app = _app(ctx)
    age = _duration(older_than) if older_than else None
    which = ", ".join(states or ["completed", "dead", "cancelled"])
    where = f" on queue {queue}" if queue else ""
    if not yes:
        click.confirm(f"delete {which} jobs{where}?", abort=True)
    deleted = app.purge(queue=queue, states=states, older_than=age)
    console.print(f"deleted {deleted} job(s)")


@cli.command()
@click.argument("app_spec", metavar="APP")
@click.pass_context
def schedules(ctx: click.Context, app_spec: str) -> None:
    """List APP's periodic schedules with their next run."""
    app = _app(ctx, app_spec)
    if not app.schedules:
        console.print(f"{app_spec} has no periodic schedules")
        return
    table = Table()
    for column in ("schedule", "when", "queue", "missed ticks", "next run"):
        table.add_column(column)
    now = time.time()
    for schedule in app.schedules:
        task = app.registered(schedule.task)
        queue = task.queue if task is not None else "default"
        nxt = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(schedule.next_tick(now)))
        table.add_row(schedule.name, schedule.when, queue, schedule.missed, nxt)
    console.print(table)


@cli.command()
@click.argument("queues", nargs=-1, required=True)
@click.pass_context
def pause(ctx: click.Context, queues: Sequence[str]) -> None:
    """Stop workers taking jobs from QUEUES; running jobs finish, the rest wait."""
    _app(ctx).pause(*queues)
    console.print(f"paused {', '.join(queues)}")


@cli.command()
@click.argument("queues", nargs=-1, required=True)
@click.pass_context
def resume(ctx: click.Context, queues: Sequence[str]) -> None:
    """Let workers take jobs from QUEUES again."""
    _app(ctx).resume(*queues)
    console.print(f"resumed {', '.join(queues)}")


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the engine's schema. SQLite migrates on first use; PostgreSQL
    only here, or at start with ?migrate=1 in its URL."""
    app = _app(ctx)
    where = redact_url(app.settings.url)
    if app.settings.url.split("://", 1)[0].lower() in {"postgresql", "postgres"}:
        from conveyor.backends.postgres import migrate_database
        from conveyor.backends.postgres.migrate import latest_version

        applied, version = migrate_database(app.settings.url, app.settings.prefix)
        done = f"applied {', '.join(map(str, applied))}" if applied else "already current"
        if version > latest_version():  # a newer Conveyor migrated it, and said this one reads it
            done = f"newer than this Conveyor's {latest_version()}, which still reads it"
        console.print(f"{where} schema {app.settings.prefix!r}: {done}; schema version {version}")
        return
    version = getattr(app.backend, "schema_version", lambda: 0)()
    console.print(f"{where}: schema version {version}")


@cli.command()
@click.option("--briefs", type=click.IntRange(1, 1000), default=12, show_default=True)
@click.option("--url", "demo_url", help="Engine URL (default: a fresh SQLite file in a temp folder).")
def demo(briefs: int, demo_url: str | None) -> None:
    """Run the media-pipeline demo on embedded SQLite, with live progress."""
    from conveyor.demo import run_demo

    run_demo(briefs=briefs, url=demo_url, console=console)


@cli.command()
@click.option("--url", "bench_url", help="Engine URL (default: a fresh SQLite file in a temp folder).")
@click.option(
    "--jobs",
    "n_jobs",
    type=click.IntRange(100),
    default=20_000,
    show_default=True,
    help="Jobs per drain; single enqueue stores at most 20,000, bulk enqueue 5 times as many.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Also drain with this many worker processes.",
)
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--only",
    help="Comma-separated scenarios: enqueue,enqueue_threads,aenqueue,aenqueue_tasks,bulk,drain,drain_sync,"
    "latency,io (the default run), and backlog_queued,backlog_finished (run only when named).",
)
@click.option(
    "--backlog",
    type=click.IntRange(1_000),
    default=1_000_000,
    show_default=True,
    help="Jobs behind the backlog scenarios' 10,000-job drains.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="Run the scenarios this many times, one round after another, and report each one's median "
    "(the note gives the range).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write results to this file.")
def bench(
    bench_url: str | None,
    n_jobs: int,
    processes: int,
    concurrency: int,
    only: str | None,
    backlog: int,
    rounds: int,
    json_path: str | None,
) -> None:
    """Measure enqueue, drain, latency and io-bound throughput on an engine."""
    from conveyor.bench import run_bench

    scenarios = [s.strip() for s in only.split(",")] if only else None
    run_bench(
        url=bench_url,
        jobs=n_jobs,
        processes=processes,
        concurrency=concurrency,
        scenarios=scenarios,
        json_path=json_path,
        console=console,
        backlog=backlog,
        rounds=rounds,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ConveyorErrors become one line on stderr and exit code 1."""
    try:
        cli.main(args=argv, prog_name="conveyor", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(1) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except (ConveyorError, JobNotFound) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except TimeoutError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


__all__ = ["cli", "main"]
