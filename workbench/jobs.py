"""Background jobs: long work in a worker thread with progress, Stop and a result.

A browser session owns a `Jobs`; a page starts calibration, training, convert, export... as a
`Job` and returns at once, so a change of page (which stops the page's script) does not stop
the work. The worker reports progress with `Job.progress`, which is also where a Stop takes
effect: it raises `JobStopped` in the worker, between two units of work (a batch, a step, a
phase). Nothing here knows about Streamlit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from workbench.errors import WorkbenchError

__all__ = ["Job", "JobStopped", "Jobs", "Status"]

T = TypeVar("T")
Status = Literal["running", "done", "stopped", "failed"]
log = logging.getLogger(__name__)
_RUNNING: weakref.WeakSet[Job[Any]] = weakref.WeakSet()


class JobStopped(Exception):
    """Raised inside a job's worker when the user asked it to stop."""


@dataclass(eq=False)
class Job(Generic[T]):
    """One piece of long work: what it is, how far it got, and how it ended.

    `on_done` receives the result in the worker thread once `work` returns, before the status
    turns "done", so whoever sees "done" also sees what the result changed.
    """

    kind: str  # calibrate, train, convert, export, latency, sensitivity...
    label: str  # for people: "Calibrate 16 batches of 64"
    work: Callable[[Job[T]], T]
    on_done: Callable[[T], None] | None = None
    estimate: float | None = None  # expected seconds, when known
    status: Status = "running"
    fraction: float = 0.0
    text: str = ""
    result: T | None = None
    error: Exception | None = None
    details: str = ""  # the traceback of an unexpected failure
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    after: tuple[Job[Any], ...] = ()  # jobs this one waits for before it starts its work
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Job[T]:
        self._thread = threading.Thread(target=self._run, name=f"job-{self.kind}", daemon=True)
        _RUNNING.add(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        log.info("job %s started: %s", self.kind, self.label)
        try:
            for earlier in self.after:
                self.text = f"waiting for the {earlier.kind} job to stop…"
                while not earlier.wait(0.1):
                    self.check()
            self.started = time.monotonic()
            result = self.work(self)
            self.result = result
            if self.on_done is not None:
                self.on_done(result)
            self.fraction, self.status = 1.0, "done"
        except JobStopped:
            self.status = "stopped"
        except Exception as exc:  # a job never takes the server down: the page shows it
            self.error, self.status = exc, "failed"
            if not isinstance(exc, WorkbenchError):
                self.details = "".join(traceback.format_exception(exc))
                log.exception("job %s failed", self.kind, exc_info=exc)
        except BaseException as exc:  # SystemExit and the like: the job still ends, failed
            self.error, self.status = RuntimeError(f"{type(exc).__name__}: {exc}"), "failed"
            self.details = "".join(traceback.format_exception(exc))
            log.exception("job %s ended by %s", self.kind, type(exc).__name__, exc_info=exc)
            raise
        finally:
            self.finished = time.monotonic()
            _RUNNING.discard(self)
            log.info("job %s %s after %.1f s", self.kind, self.status, self.elapsed)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the worker to stop at its next progress report."""
        self._stop.set()

    def check(self) -> None:
        """Raise JobStopped if a stop was asked for (the worker calls this between units)."""
        if self._stop.is_set():
            raise JobStopped

    def progress(self, fraction: float, text: str | None = None) -> None:
        """Report how far the work is (0..1) and what it is doing; a Stop takes effect here."""
        self.fraction = min(1.0, max(0.0, fraction))
        if text is not None:
            self.text = text
        self.check()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running


class Jobs:
    """The jobs of one session: at most one running per kind, and a log of every job."""

    def __init__(self) -> None:
        self.log: list[Job[Any]] = []
        self._lock = threading.Lock()

    def start(
        self,
        kind: str,
        label: str,
        work: Callable[[Job[T]], T],
        *,
        on_done: Callable[[T], None] | None = None,
        estimate: float | None = None,
    ) -> Job[T]:
        """Start `work(job)` in a worker thread. A job of the same kind that is still running
        is asked to stop, and the new one starts its work once it has (the page asks the
        user before it calls this)."""
        with self._lock:
            earlier = tuple(self.running(kind))
            for old in earlier:
                old.stop()
            job = Job(kind, label, work, on_done, estimate, after=earlier)
            self.log.append(job)
        return job.start()

    def running(self, kind: str | None = None) -> list[Job[Any]]:
        return [j for j in self.log if j.running and (kind is None or j.kind == kind)]

    def last(self, kind: str) -> Job[Any] | None:
        """The latest job of this kind, running or ended."""
        return next((j for j in reversed(self.log) if j.kind == kind), None)

    def stop_all(self) -> None:
        for job in self.running():
            job.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every running job; True when none runs any more."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self.running():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.wait(left)
        return not self.running()


def _stop_at_exit() -> None:
    """A thread killed inside torch at interpreter exit aborts the process: stop and join."""
    jobs = list(_RUNNING)
    for job in jobs:
        job.stop()
    for job in jobs:
        job.wait(30)


atexit.register(_stop_at_exit)
