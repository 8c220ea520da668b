"""`--processes N`: one command runs N worker processes and keeps them running.

Signals are forwarded to every child (a second SIGINT/SIGTERM too, so children
stop at once); a child that dies while we are not stopping is restarted, with a
backoff from 1 s to 30 s when it keeps dying young.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("conveyor.supervisor")
_SUPERVISOR_PID = "CONVEYOR_SUPERVISOR_PID"  # set in each child's environment
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_YOUNG = 5.0
_CLEAN_EXITS = (
    0,
    -signal.SIGTERM,
    -signal.SIGINT,
    130,
)  # a child that exits sooner than this after starting counts as crash-looping


class Supervisor:
    """Runs `processes` copies of `argv` (a `conveyor worker` command line)."""

    def __init__(self, argv: Sequence[str], processes: int) -> None:
        self.argv = list(argv)
        self.processes = processes
        self.children: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = False
        self.failures = 0

    def _spawn(self) -> None:
        child = subprocess.Popen(self.argv, env={**os.environ, _SUPERVISOR_PID: str(os.getpid())})
        self.children[child.pid] = (child, time.monotonic())
        log.info("started worker process %d", child.pid)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for child, _ in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def run(self) -> int:
        """Start the children, supervise them until all have exited; returns the exit code."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._forward)
        for _ in range(self.processes):
            self._spawn()
        delay = 1.0
        while self.children:
            pid, status = os.wait()  # blocks; signals run their handler and the wait resumes
            entry = self.children.pop(pid, None)
            if entry is None:
                continue
            child, started = entry
            code = os.waitstatus_to_exitcode(status)
            child.returncode = code
            if self.stopping or code == 0:
                # 0: a clean exit (e.g. --burst found no work). A child that was still
                # starting when we forwarded the signal dies of it (-15, or 130 for
                # SIGINT) before claiming anything: a clean stop too.
                self.failures += code not in _CLEAN_EXITS
                continue
            log.error("worker process %d exited with %d; restarting", pid, code)
            delay = min(30.0, delay * 2) if time.monotonic() - started < _YOUNG else 1.0
            self._sleep_unless_stopping(delay)
            if not self.stopping:
                self._spawn()
        return 1 if self.failures else 0

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)


def child_argv(args: Sequence[str]) -> list[str]:
    """The command line that runs one worker process with the same options."""
    return [sys.executable, "-m", "conveyor", *args]


def follow_supervisor() -> None:
    """In a worker process the supervisor started: have SIGTERM sent here when the
    supervisor dies, even of SIGKILL, so the worker stops as on a SIGTERM (running jobs
    get their grace) instead of running on unsupervised. Until 2026-12-06 a killed
    supervisor left its workers running. Linux only (prctl); elsewhere they run on."""
    supervisor = os.environ.pop(_SUPERVISOR_PID, None)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot follow the supervisor: prctl failed with errno %d", ctypes.get_errno())
        return
    if os.getppid() != int(supervisor):  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
