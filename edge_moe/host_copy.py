"""A persistent pool of host threads that copy byte ranges: the staging copy of a cache fill.

Why: one thread's memcpy moves ~5-10 GB/s, PCIe moves ~49 GB/s from pinned memory (DESIGN.md),
so a fill copied by the calling thread alone spends most of its time on the host. numpy's
copies release the GIL, so a few Python threads copy in parallel.

A job is a list of *segments*, each a list of (dst, src) uint8 pieces. Workers take segments
in order, one at a time; the caller waits for segments in order (`wait(i)`), so it can start
a DMA of segment i while segment i + 1 is still being copied. One job at a time, issued
from one thread (the executor's). Threads start on the first job and stop on `close`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

Piece = tuple[np.ndarray, np.ndarray]  # (dst, src): uint8 arrays of equal size


class CopyPool:
    def __init__(self, n_threads: int) -> None:
        if n_threads < 1:
            raise ValueError(f"a copy pool needs at least one thread, got {n_threads}")
        self.n_threads = n_threads
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._job: Sequence[Sequence[Piece]] = ()
        self._next = 0  # next segment a worker takes
        self._done: list[bool] = []
        self._n_done = 0
        self._error: BaseException | None = None
        self._closed = False

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        return tuple(self._threads)

    def start(self, segments: Sequence[Sequence[Piece]]) -> None:
        """Hand `segments` to the workers; returns at once. The arrays must stay alive and
        unchanged until `wait_all` (or the last `wait`) returns."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the copy pool is closed")
            if self._n_done != len(self._job):
                raise RuntimeError("a copy job is still running (one job at a time)")
            if not self._threads:
                self._start_threads()
            self._job, self._next, self._n_done, self._error = segments, 0, 0, None
            self._done = [False] * len(segments)
            self._cv.notify_all()

    def wait(self, segment: int) -> None:
        """Block until `segment` of the current job is copied; raise a worker's error (after
        the whole job stopped, so no worker still writes into the destination)."""
        with self._cv:
            while not self._done[segment] and self._error is None:
                self._cv.wait()
        if self._error is not None:
            self.wait_all()  # raises once no worker still writes

    def wait_all(self) -> None:
        """Block until the whole job is copied, then drop it (its arrays are the caller's again)."""
        with self._cv:
            while self._n_done != len(self._job):
                self._cv.wait()
            err, self._error = self._error, None
            self._job, self._done, self._next, self._n_done = (), [], 0, 0
        if err is not None:
            raise err

    def copy(self, segments: Sequence[Sequence[Piece]]) -> None:
        """Copy every piece; returns when all are copied."""
        self.start(segments)
        self.wait_all()

    def close(self, wait: bool = True) -> None:
        """Stop the threads (after the current job) and, with `wait`, join them. Idempotent."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait:
            for t in self._threads:
                t.join()

    def _start_threads(self) -> None:
        for i in range(self.n_threads):
            t = threading.Thread(target=self._work, name=f"edge-moe-copy-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        cv = self._cv
        while True:
            with cv:
                while self._next >= len(self._job) and not self._closed:
                    cv.wait()
                if self._next >= len(self._job):  # closed and nothing left
                    return
                i = self._next
                self._next += 1
                pieces = None if self._error is not None else self._job[i]
            err = _copy_pieces(pieces) if pieces is not None else None
            pieces = None  # hold no reference to the caller's arrays between jobs
            with cv:
                if err is not None and self._error is None:
                    self._error = err
                self._done[i] = True
                self._n_done += 1
                cv.notify_all()


def _copy_pieces(pieces: Sequence[Piece]) -> BaseException | None:
    try:
        for dst, src in pieces:
            np.copyto(dst, src)  # releases the GIL
    except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
        return e
    return None
