"""GPU memory for the expert cache's slots, and fills ordered against the kernels that read them.

`SlotStore` allocates every slot once, as one uint8 tensor [n_slots, slot_stride] on the
device. A slot holds one expert's parts (gate, up, down) as the raw bytes the GGUF stores;
the executor interprets them. Each part starts at a multiple of `alignment` bytes so a
kernel may view it as a wider dtype.

Ordering on CUDA (one compute stream reads the slots, one side stream writes them):

    fill(slot, parts)          side stream: wait for `last_read[slot]`, copy, record `filled[slot]`
    fill_now(slot, parts)      the same on a stream of its own, enqueued by the caller at once
    wait_filled(slot, stream)  compute stream waits for `filled[slot]` before reading the slot
    mark_read(slot, stream)    record `last_read[slot]` after the kernels that read the slot
                               (mark_read_many: one event for all slots a layer read)

so a slot is never read while it is written (wait_filled) nor overwritten while a kernel
still reads it (mark_read). Events are re-recorded, never reallocated: a wait orders
against the latest record at the time it is enqueued.

Host sources: the GGUF's memory map is pageable, so `fill` first copies the expert into
one of `n_staging` pinned buffers (a ring, allocated once), then the side stream copies
the buffer to the slot asynchronously. Before the CPU rewrites a staging buffer it waits
for the copy that last read it: the one host wait in `fill` besides the staging copy
itself, and it blocks only when the copy engine is `n_staging` fills behind.

The staging copy is split into segments of `chunk_bytes` (slot byte ranges) that a small
persistent thread pool copies (edge_moe/host_copy.py; one thread's memcpy is far slower
than PCIe); the calling thread enqueues the DMA of each segment as soon as it is copied,
so the DMA of segment i overlaps the copy of segment i + 1. A fill of at most `chunk_bytes`
is copied by one thread (no wake-up cost).

On CUDA all of that runs on a background thread (edge_moe/ordered_worker.py), in the order
the fills were asked for: `fill` queues the job and returns at once, so the decode loop does
not wait for host copies (they took it 0.5-1.2 ms per Qwen3-sized fill). `wait_filled` first
waits, on the host, until the slot's latest fill job has run (recorded `filled[slot]`): it
blocks only when a slot is read right after its fill. The job waits for the read event the
slot had when the fill was asked for (events are recorded later, never earlier, than that).
The staging copy costs DRAM bandwidth (read and write) on top of the DMA's read; sources that
are already pinned torch tensors skip it and are copied straight to the slot (they must stay
unchanged until the fill is done).

On a CPU device (tests, no GPU) the same calls copy synchronously and the event calls do
nothing.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch

from edge_moe.host_copy import CopyPool, Piece
from edge_moe.ordered_worker import OrderedWorker

HostBytes = np.ndarray | torch.Tensor
READ_EVENTS = 256  # ring of events marking slot reads (mark_read_many)
# A few MB: large enough that a segment's DMA and wake-up cost little (~80 us at 49 GB/s for
# 4 MiB), small enough that a 99 MB expert gives every thread work and the pipeline fills fast.
CHUNK_BYTES = 4 << 20
# Copy threads: a few saturate DRAM (a copy reads and writes). Fills now overlap the next
# layers, so they share the cores and DRAM with ggml's threads while they run; only experts
# larger than `chunk_bytes` (Mixtral's 99 MB, not Qwen3's 2.65 MB) wake them at all.
DEFAULT_COPY_THREADS = max(1, min(8, os.cpu_count() or 1))


class SlotStore:
    def __init__(self, n_slots: int, part_nbytes: Sequence[int], device: torch.device | str,
                 n_staging: int = 2, alignment: int = 256, copy_threads: int = DEFAULT_COPY_THREADS,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        if n_slots < 1:
            raise ValueError(f"a slot store needs at least one slot, got {n_slots}")
        if not part_nbytes or any(n <= 0 for n in part_nbytes):
            raise ValueError(f"part sizes must be positive byte counts, got {list(part_nbytes)}")
        if n_staging < 1:
            raise ValueError(f"at least one staging buffer is needed, got {n_staging}")
        if alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        if copy_threads < 1:
            raise ValueError(f"at least one copy thread is needed, got {copy_threads}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self._pool = CopyPool(copy_threads)  # threads start on the first fill larger than a chunk
        # a store dropped without close() still stops its threads (no join: GC may run on any thread)
        weakref.finalize(self, self._pool.close, False)
        self.device = torch.device(device)
        self.n_slots = n_slots
        self.part_nbytes = tuple(int(n) for n in part_nbytes)
        offsets, end = [], 0
        for n in self.part_nbytes:
            offsets.append(end)
            end = _round_up(end + n, alignment)
        self.part_offsets = tuple(offsets)
        self.slot_stride = end
        self.is_cuda = self.device.type == "cuda"

        self.storage = torch.zeros((n_slots, self.slot_stride), dtype=torch.uint8, device=self.device)
        # Views made once, so the hot path creates no tensors.
        self._parts = [tuple(self.storage[s, o:o + n] for o, n in zip(self.part_offsets, self.part_nbytes))
                       for s in range(n_slots)]
        if self.is_cuda:
            # default priority: never the decode graphs' capture stream (decode_graphs.py)
            self._side_stream = torch.cuda.Stream(self.device)
            # The side stream writes memory allocated (and zeroed) on the current stream.
            self._side_stream.wait_stream(torch.cuda.current_stream(self.device))
            self.storage.record_stream(self._side_stream)
            self._staging = [torch.zeros(self.slot_stride, dtype=torch.uint8, pin_memory=True)
                             for _ in range(n_staging)]
            self._staging_parts = [[buf.numpy()[o:o + n] for o, n in zip(self.part_offsets, self.part_nbytes)]
                                   for buf in self._staging]
            self._staging_free = [torch.cuda.Event() for _ in range(n_staging)]
            self._filled = [torch.cuda.Event() for _ in range(n_slots)]
            self._read_events = [torch.cuda.Event() for _ in range(READ_EVENTS)]
            self._next_read_event = 0
            # torch creates an event on its first record; the fill thread and this one record and
            # wait on the same events, so create them all here (recorded once, at construction)
            # rather than racing to create one (a CUDA "invalid argument" on the H100 box)
            for event in [*self._staging_free, *self._filled, *self._read_events]:
                event.record(torch.cuda.current_stream(self.device))
            self._last_read = [self._read_events[0]] * n_slots  # recorded above: a wait on it returns at once
            self._next_staging = 0
            # EDGE_MOE_SYNC_FILLS=1: fills on the calling thread, as before the worker (A/B runs)
            sync = os.environ.get("EDGE_MOE_SYNC_FILLS") == "1"
            self._worker: OrderedWorker | None = None if sync else OrderedWorker("edge-moe-fills")
            if self._worker is not None:
                weakref.finalize(self, self._worker.close)
            self._ticket = [0] * n_slots  # the worker's ticket of each slot's latest fill
            # the stream of fill_now / copy_now, and copy_now's copy function (edge_moe/cuda_memcpy.py: ~6 us
            # a copy, torch's ~20)
            self._now_stream = torch.cuda.Stream(self.device)
            self._now_stream.wait_stream(torch.cuda.current_stream(self.device))
            self.storage.record_stream(self._now_stream)
            from edge_moe.cuda_memcpy import load as load_runtime_copy

            self._runtime_copy = load_runtime_copy()
            self._now_done = torch.cuda.Event()
            self._now_done.record(self._now_stream)
            base = self.storage.data_ptr()
            self._part_ptrs = [[base + s * self.slot_stride + o for o in self.part_offsets] for s in range(n_slots)]
        else:
            self._worker = None
            self._host_parts = [[p.numpy() for p in parts] for parts in self._parts]

    @property
    def nbytes(self) -> int:
        return self.storage.numel()

    def parts(self, slot: int) -> tuple[torch.Tensor, ...]:
        """The slot's parts as uint8 views of the device storage (gate, up, down, ...)."""
        return self._parts[slot]

    def fill(self, slot: int, host_parts: Sequence[HostBytes]) -> None:
        """Copy one expert's parts (host bytes, in `part_nbytes` order) into `slot`. A part may
        be shorter than the slot's (layers whose experts use a smaller type); it fills the start.

        On CUDA the copy is asynchronous on the side stream and waits for the last read
        the executor marked on this slot; readers must `wait_filled` before using it.
        """
        self._check_fill(slot, host_parts)
        if not self.is_cuda:
            self._copy_to_host(self._host_parts[slot], host_parts)
            return
        last_read = self._last_read[slot]
        if all(isinstance(src, torch.Tensor) and src.is_pinned() for src in host_parts):
            job = lambda: self._fill_from_pinned(slot, host_parts, last_read)  # type: ignore[arg-type]  # noqa: E731
        else:
            job = lambda: self._fill_through_staging(slot, host_parts, last_read)  # noqa: E731
        if self._worker is None:  # (a store driven through the CUDA path by tests: synchronous)
            job()
        else:
            self._ticket[slot] = self._worker.submit(job)

    def fill_now(self, slot: int, host_parts: Sequence[HostBytes]) -> None:
        """`fill` enqueued on this thread, on the store's own copy stream (not the side stream,
        where an admission's fill may be queued): a decode step streaming a missed expert needs
        its copy started at once, behind nothing. CUDA: the parts must be page-locked torch
        tensors (`can_fill_now`). Readers `wait_filled` as after `fill`."""
        self._check_fill(slot, host_parts)
        if not self.is_cuda:
            self._copy_to_host(self._host_parts[slot], host_parts)
            return
        self._await_queued(slot)  # an earlier fill of this slot may still be queued
        self._fill_from_pinned(slot, host_parts, self._last_read[slot], self._now_stream)  # type: ignore[arg-type]

    def copy_now(self, slots: Sequence[int], sources: Sequence[Sequence[tuple[int, int]]],
                 reader: torch.cuda.Stream) -> None:
        """`fill_now` of several slots from raw page-locked host addresses, and `reader` made to
        wait for all of them (no per-slot `wait_filled` needed): sources[i] holds one (address,
        nbytes) per part of slots[i]. The decode step's lean path: ~6 us of host time a copy,
        where tensor views, checks and per-slot events cost ~50 us an expert (H100 box, session 12).
        CUDA with the runtime's copy function only (`can_copy_now`)."""
        assert self._runtime_copy is not None
        now, copy = self._now_stream, self._runtime_copy
        handle = now.cuda_stream
        waited = set()
        for slot in slots:
            self._await_queued(slot)
            read = self._last_read[slot]
            if id(read) not in waited:  # (one layer's reads share one event: usually one wait)
                now.wait_event(read)
                waited.add(id(read))
        dsts, srcs, sizes = [], [], []
        for slot, parts in zip(slots, sources):
            for dst, (src, nbytes) in zip(self._part_ptrs[slot], parts):
                dsts.append(dst)
                srcs.append(src)
                sizes.append(nbytes)
        copy.h2d_many(dsts, srcs, sizes, handle)
        self._now_done.record(now)
        reader.wait_event(self._now_done)

    @property
    def can_copy_now(self) -> bool:
        return self.is_cuda and self._runtime_copy is not None

    def can_fill_now(self, host_parts: Sequence[HostBytes]) -> bool:
        """Whether `fill_now` takes these parts: any on a CPU device, page-locked tensors on CUDA."""
        return not self.is_cuda or all(isinstance(p, torch.Tensor) and p.is_pinned() for p in host_parts)

    def fill_many(self, fills: Sequence[tuple[int, Sequence[HostBytes]]]) -> None:
        """`fill` of several slots as one job: the staging copies of up to `n_staging` small
        experts at a time run on the copy threads side by side (one thread copies ~6 GB/s,
        several ~23 GB/s: a prefill streaming Qwen3's 2.65 MB experts one by one was bound by
        it), each expert's DMA enqueued as soon as its copy is done. Pinned sources (page-locked
        GGUF bytes: edge_moe/host_register.py) need no staging: one job enqueues all their DMAs.
        Large experts (over `chunk_bytes`) go one by one, as `fill` does them."""
        for slot, parts in fills:  # all of them before any is issued
            self._check_fill(slot, parts)
        pinned = [all(isinstance(p, torch.Tensor) and p.is_pinned() for p in parts) for _, parts in fills]
        if self.is_cuda and len(fills) >= 2 and all(pinned):  # DMAs only: one job enqueues them all
            reads = [self._last_read[slot] for slot, _ in fills]
            self._submit(fills, lambda: [self._fill_from_pinned(slot, parts, read)  # type: ignore[arg-type]
                                         for (slot, parts), read in zip(fills, reads)])
            return
        small = [sum(_nbytes(p) for p in parts) <= self.chunk_bytes and not pin
                 for (_, parts), pin in zip(fills, pinned)]
        if not self.is_cuda or len(fills) < 2 or not all(small):
            for slot, parts in fills:
                self.fill(slot, parts)
            return
        reads = [self._last_read[slot] for slot, _ in fills]
        self._submit(fills, lambda: self._fill_small_through_staging(fills, reads))

    def _submit(self, fills: Sequence[tuple[int, Sequence[HostBytes]]], job: Callable[[], object]) -> None:
        """Run `job`, the fills of several slots, on the fill worker (or here, without one)."""
        if self._worker is None:
            job()
            return
        ticket = self._worker.submit(job)
        for slot, _ in fills:
            self._ticket[slot] = ticket

    def wait_filled(self, slot: int, stream: torch.cuda.Stream | None = None) -> None:
        """Make `stream` (default: the current one) wait until the slot's latest fill is done."""
        if self.is_cuda:
            self._await_queued(slot)  # its job has not recorded filled[slot] yet
            (stream or torch.cuda.current_stream(self.device)).wait_event(self._filled[slot])

    def mark_read(self, slot: int, stream: torch.cuda.Stream | None = None) -> None:
        """Record, after the kernels that read `slot` were enqueued on `stream`, that they read it."""
        self.mark_read_many((slot,), stream)

    def mark_read_many(self, slots: Sequence[int] | np.ndarray, stream: torch.cuda.Stream | None = None) -> None:
        """`mark_read` for several slots with one event record (one per layer, not per slot).
        Events come from a ring: by the time one is recorded again, a fill still waiting on it
        waits for a later point of the same stream, which is later than the reads: still safe."""
        if self.is_cuda and len(slots):
            event = self._read_events[self._next_read_event]
            self._next_read_event = (self._next_read_event + 1) % len(self._read_events)
            event.record(stream or torch.cuda.current_stream(self.device))
            for slot in slots:
                self._last_read[int(slot)] = event

    def synchronize(self) -> None:
        """Block the host until every fill issued so far is done (tests, shutdown)."""
        if self.is_cuda:
            if self._worker is not None:
                self._worker.drain()
            self._side_stream.synchronize()

    def close(self) -> None:
        """Wait for the fills in flight and stop the fill and copy threads. The slots stay readable."""
        try:
            self.synchronize()
        finally:
            if self._worker is not None:
                self._worker.close()
            self._pool.close()

    @property
    def copy_threads(self) -> int:
        return self._pool.n_threads

    def _copy_to_host(self, dst_parts: Sequence[np.ndarray], host_parts: Sequence[HostBytes]) -> None:
        """Copy each part to the start of its destination (CPU device: the slot itself)."""
        if sum(_nbytes(p) for p in host_parts) <= self.chunk_bytes:
            _copy_parts(dst_parts, host_parts)
            return
        self._pool.copy([pieces for _, _, pieces in self._segments(dst_parts, host_parts)])

    def _segments(self, dst_parts: Sequence[np.ndarray], host_parts: Sequence[HostBytes],
                  ) -> list[tuple[int, int, list[Piece]]]:
        """The copy split at multiples of `chunk_bytes` of slot byte offsets:
        [(lo, hi, pieces)], lo..hi the slot bytes the segment's pieces write (in order)."""
        segments: list[tuple[int, int, list[Piece]]] = []
        seg_index = -1
        c = self.chunk_bytes
        for dst, src, base in zip(dst_parts, host_parts, self.part_offsets):
            src = _host_bytes(src)
            pos = 0
            while pos < src.size:
                seg = (base + pos) // c
                end = min(src.size, (seg + 1) * c - base)
                piece = (dst[pos:end], src[pos:end])
                if seg == seg_index:
                    lo, _, pieces = segments[-1]
                    pieces.append(piece)
                    segments[-1] = (lo, base + end, pieces)
                else:
                    segments.append((base + pos, base + end, [piece]))
                    seg_index = seg
                pos = end
        return segments

    def _fill_through_staging(self, slot: int, host_parts: Sequence[HostBytes], last_read: torch.cuda.Event,
                              ) -> None:
        i = self._next_staging
        self._next_staging = (i + 1) % len(self._staging)
        self._staging_free[i].synchronize()  # the DMA that last read this buffer has finished
        side, staging, dst = self._side_stream, self._staging[i], self.storage[slot]
        side.wait_event(last_read)
        try:
            if sum(_nbytes(p) for p in host_parts) <= self.chunk_bytes:  # small: this thread, one DMA
                _copy_parts(self._staging_parts[i], host_parts)
                end = self._end(host_parts)
                with torch.cuda.stream(side):
                    dst[:end].copy_(staging[:end], non_blocking=True)
                return
            segments = self._segments(self._staging_parts[i], host_parts)
            self._pool.start([pieces for _, _, pieces in segments])
            try:
                with torch.cuda.stream(side):
                    for k, (lo, hi, _) in enumerate(segments):
                        self._pool.wait(k)  # segment k is in pinned memory: its DMA may start
                        dst[lo:hi].copy_(staging[lo:hi], non_blocking=True)
            finally:
                self._pool.wait_all()  # no worker writes the buffer once fill returns (or raises)
        finally:
            # recorded even after an error: the buffer's reuse must wait for the DMAs enqueued
            self._staging_free[i].record(side)
            self._filled[slot].record(side)

    def _fill_small_through_staging(self, fills: Sequence[tuple[int, Sequence[HostBytes]]],
                                    reads: Sequence[torch.cuda.Event]) -> None:
        """Experts of at most `chunk_bytes`, `n_staging` at a time: one copy-pool segment each."""
        side = self._side_stream
        n_buf = len(self._staging)
        for lo in range(0, len(fills), n_buf):
            batch = list(zip(fills[lo:lo + n_buf], reads[lo:lo + n_buf]))
            bufs = []
            for _ in batch:
                i = self._next_staging
                self._next_staging = (i + 1) % n_buf
                self._staging_free[i].synchronize()  # the DMA that last read this buffer has finished
                bufs.append(i)
            segments = [[(dst[:_nbytes(src)], _host_bytes(src)) for dst, src in zip(self._staging_parts[i], parts)]
                        for i, ((_, parts), _) in zip(bufs, batch)]
            self._pool.start(segments)
            try:
                for j, (i, ((slot, parts), last_read)) in enumerate(zip(bufs, batch)):
                    side.wait_event(last_read)
                    self._pool.wait(j)  # this expert is in pinned memory: its DMA may start
                    end = self._end(parts)
                    with torch.cuda.stream(side):
                        self.storage[slot][:end].copy_(self._staging[i][:end], non_blocking=True)
                    self._staging_free[i].record(side)
                    self._filled[slot].record(side)
            finally:
                self._pool.wait_all()  # no worker writes a buffer once this returns (or raises)

    def _end(self, host_parts: Sequence[HostBytes]) -> int:
        """Slot bytes a fill of `host_parts` writes, from the start (one DMA covers them)."""
        return max(o + _nbytes(p) for o, p in zip(self.part_offsets, host_parts))

    def _check_fill(self, slot: int, host_parts: Sequence[HostBytes]) -> None:
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} is outside 0..{self.n_slots - 1}")
        if len(host_parts) != len(self.part_nbytes):
            raise ValueError(f"expected {len(self.part_nbytes)} parts, got {len(host_parts)}")
        for i, (src, n) in enumerate(zip(host_parts, self.part_nbytes)):
            got = _nbytes(src)
            if got > n:
                raise ValueError(f"part {i} has {got} bytes, the slot holds {n}")

    def _await_queued(self, slot: int) -> None:
        """Block until the fill worker has run the job of the slot's latest fill (it records
        filled[slot] and reads last_read[slot] only then)."""
        if self._worker is not None and not self._worker.done(self._ticket[slot]):
            self._worker.wait(self._ticket[slot])

    def _fill_from_pinned(self, slot: int, host_parts: Sequence[torch.Tensor], last_read: torch.cuda.Event,
                          stream: torch.cuda.Stream | None = None) -> None:
        """DMAs of page-locked parts into the slot on `stream` (default: the side stream),
        after the slot's last read; filled[slot] recorded behind them."""
        stream = stream or self._side_stream
        stream.wait_event(last_read)
        with torch.cuda.stream(stream):
            for dst, src in zip(self._parts[slot], host_parts):
                src = _flat_bytes(src)
                dst[:src.numel()].copy_(src, non_blocking=True)
        self._filled[slot].record(stream)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _copy_parts(dst_parts: Sequence[np.ndarray], host_parts: Sequence[HostBytes]) -> None:
    """Each part to the start of its destination, on this thread."""
    for dst, src in zip(dst_parts, host_parts):
        src = _host_bytes(src)
        np.copyto(dst[:src.size], src)


def _nbytes(src: HostBytes) -> int:
    return src.nbytes if isinstance(src, np.ndarray) else src.numel() * src.element_size()


def _flat_bytes(src: torch.Tensor) -> torch.Tensor:
    if not src.is_contiguous():
        raise ValueError("host parts must be contiguous (a copy here would allocate on every fill)")
    return src.detach().reshape(-1).view(torch.uint8)


def _host_bytes(src: HostBytes) -> np.ndarray:
    """A flat uint8 numpy view of host bytes, without copying (read-only mmap views work)."""
    if isinstance(src, torch.Tensor):
        if src.device.type != "cpu":
            raise ValueError(f"host parts must be CPU memory, got a tensor on {src.device}")
        return _flat_bytes(src).numpy()
    if not src.flags.c_contiguous:
        raise ValueError("host parts must be C-contiguous (a copy here would allocate on every fill)")
    return src.reshape(-1).view(np.uint8)
