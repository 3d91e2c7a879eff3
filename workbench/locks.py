"""One process-wide lock around torch.export and the torchao passes that call it.

torch.export is not thread-safe (its pre-dispatch mode slot is process-global: two exports at
once fail with "ProxyTorchDispatchMode slot already occupied"), and Streamlit runs every
browser session in its own thread. Every export the workbench starts, directly or through
torchao's prepare/convert/train-eval switches, and every torch.export.load and
ExportedProgram.module() (both trace the graph the same way) runs under this lock.

Model computations hold it too: every forward through `workbench.stages.steps.run`, each
whole QAT step and each per-node recording. CPU ops split their work (reductions included) by
how many intra-op threads are free, so a training step run while another thread computes can
differ in the last bits from the same step run alone (by 1.5e-8 on digits_cnn weights after 5
steps beside the pattern-cache warm-up). Under the lock a session's training, calibration
and evaluation give the same bits whatever else the server does, so the command the Export
page shows rebuilds the app's model exactly.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType

__all__ = ["EXPORT_LOCK", "FairRLock"]


class FairRLock:
    """A reentrant lock granted in the order it was asked for.

    threading.RLock is not fair: a thread that releases it and asks again at once (the
    pattern-cache warm-up exports ~100 patterns back to back) almost always wins over a
    thread already waiting, and a calibration job on a fresh server sat at one batch for
    100 s. Here a waiting thread is served before the releasing thread can take it again.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: collections.deque[int] = collections.deque()
        self._released = time.monotonic()  # when it was last released (or made)

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return
            self._queue.append(me)
            while self._owner is not None or self._queue[0] != me:
                self._condition.wait()
            self._queue.popleft()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FairRLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._released = time.monotonic()
                self._condition.notify_all()

    @contextlib.contextmanager
    def when_idle(self, seconds: float, *, poll: float = 0.1) -> Iterator[None]:
        """Hold the lock once nobody has held or asked for it for `seconds`.

        For background work that should not delay a session's own steps: a QAT run takes
        the lock for every step, so it stays busy and such work waits until the run ends.
        """
        while True:
            with self._condition:
                idle = self._owner is None and not self._queue
                if idle and time.monotonic() - self._released >= seconds:
                    self._owner, self._depth = threading.get_ident(), 1
                    break
            time.sleep(poll)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> FairRLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


EXPORT_LOCK = FairRLock()
