"""One background thread that runs submitted jobs in order; callers wait for a job by its ticket.

Why: a cache fill's host side (copying an expert from the GGUF's memory map into pinned
staging, then enqueueing its DMA) took the decode thread 0.5-1.2 ms per fill on the H100 box,
on the critical path of the layer loop. Run by this thread it overlaps the next layers' GPU
and CPU work instead (their waits release the GIL; so does numpy's copy).

    worker = OrderedWorker("edge-moe-fills")
    ticket = worker.submit(lambda: ...)    # returns at once
    worker.wait(ticket)                    # blocks until that job (and every earlier one) ran
    worker.drain(); worker.close()

A job that raises stops the queue: every later job is skipped, and `submit`, `wait` and
`drain` raise the first error (wrapped, naming the worker) from then on, so a failed fill
is never mistaken for a finished one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class WorkerError(RuntimeError):
    """A job of an OrderedWorker failed; later jobs were not run."""


class OrderedWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._cv = threading.Condition()
        self._jobs: deque[tuple[int, Callable[[], None]]] = deque()
        self._submitted = 0  # tickets handed out (ticket n is the n-th job, from 1)
        self._finished = 0  # highest ticket whose job ran (or was skipped after an error)
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet finished."""
        with self._cv:
            return self._submitted - self._finished

    def submit(self, job: Callable[[], None]) -> int:
        """Queue `job`; returns its ticket."""
        with self._cv:
            self._raise_if_failed()
            if self._closed:
                raise RuntimeError(f"{self.name}: the worker is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._submitted += 1
            self._jobs.append((self._submitted, job))
            self._cv.notify_all()
            return self._submitted

    def done(self, ticket: int) -> bool:
        """Whether the job of `ticket` has run (no lock: a stale answer only means 'not yet')."""
        return self._finished >= ticket and self._error is None

    def wait(self, ticket: int) -> None:
        """Block until the job of `ticket` (and every earlier one) has run."""
        with self._cv:
            while self._finished < ticket and self._error is None:
                self._cv.wait()
            self._raise_if_failed()

    def drain(self) -> None:
        """Block until every job submitted so far has run."""
        self.wait(self._submitted)

    def close(self) -> None:
        """Run the queued jobs, then stop the thread. Idempotent; a job's error is not raised here."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WorkerError(f"{self.name}: a background job failed: {self._error!r}") from self._error

    def _run(self) -> None:
        cv = self._cv
        while True:
            with cv:
                while not self._jobs and not self._closed:
                    cv.wait()
                if not self._jobs:
                    return
                ticket, job = self._jobs.popleft()
                skip = self._error is not None
            err: BaseException | None = None
            if not skip:
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                    err = e
            job = None  # type: ignore[assignment]  # hold no reference to the job's arrays
            with cv:
                if err is not None and self._error is None:
                    self._error = err
                self._finished = ticket
                cv.notify_all()
