"""The expert slot store (edge_moe/gpu_slots.py): layout, copies, no allocation, CUDA ordering.

The CPU tests run anywhere. The `gpu` tests check the stream ordering on a real device:
a read enqueued right after `wait_filled` sees the new bytes, and a fill issued after
`mark_read` does not overwrite bytes a slow kernel is still reading.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from edge_moe.gpu_slots import SlotStore

PARTS = (1000, 3000, 1500)  # e.g. an expert's gate, up and down bytes: not multiples of the alignment


def expert_bytes(seed: int, parts: tuple[int, ...] = PARTS) -> list[np.ndarray]:
    """Read-only uint8 arrays, like views into a memory-mapped GGUF."""
    rng = np.random.default_rng(seed)
    out = []
    for n in parts:
        a = rng.integers(0, 256, n, dtype=np.uint8)
        a.setflags(write=False)
        out.append(a)
    return out


def slot_bytes(store: SlotStore, slot: int) -> list[np.ndarray]:
    return [p.cpu().numpy() for p in store.parts(slot)]


# ---- CPU ----------------------------------------------------------------------------------

def test_layout_is_aligned_views_of_one_tensor() -> None:
    store = SlotStore(4, PARTS, "cpu", alignment=256)
    assert store.part_offsets == (0, 1024, 4096)
    assert store.slot_stride == 5632 and store.nbytes == 4 * 5632
    base = store.storage.data_ptr()
    for slot in range(4):
        for part, offset, n in zip(store.parts(slot), store.part_offsets, PARTS):
            assert part.dtype == torch.uint8 and part.numel() == n
            assert part.data_ptr() == base + slot * store.slot_stride + offset


def test_fill_copies_numpy_and_torch_sources() -> None:
    store = SlotStore(3, PARTS, "cpu")
    first = expert_bytes(1)
    store.fill(2, first)
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 2), first))
    # torch tensors of any dtype are taken as their bytes
    second = [torch.from_numpy(a.copy()).view(torch.int8) for a in expert_bytes(2)]
    second[2] = torch.from_numpy(expert_bytes(2)[2].copy()).view(torch.float16)
    store.fill(0, second)
    for got, src in zip(slot_bytes(store, 0), second):
        assert np.array_equal(got, src.view(torch.uint8).numpy())
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 2), first))  # untouched
    store.wait_filled(0)
    store.mark_read(0)  # no-ops without CUDA
    store.synchronize()


def test_fill_now_copies_at_once_and_checks_its_input() -> None:
    """A decode step's streaming fill (`fill_now`): on a CPU store a plain copy of each part; on
    CUDA it takes page-locked tensors only (`can_fill_now`)."""
    store = SlotStore(3, PARTS, "cpu")
    src = expert_bytes(7)
    assert store.can_fill_now(src) and not store.can_copy_now  # raw-address copies: CUDA only
    store.fill_now(1, src)
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 1), src))
    assert not slot_bytes(store, 0)[0].any() and not slot_bytes(store, 2)[0].any()  # only its slot
    with pytest.raises(ValueError):
        store.fill_now(1, expert_bytes(8, (1000, 3000, 1501)))  # a part longer than the slot's


def test_runtime_copy_needs_a_loaded_cuda_runtime() -> None:
    """edge_moe/cuda_memcpy.py binds the CUDA runtime torch loaded; a CPU-only process has none."""
    from edge_moe.cuda_memcpy import load

    copy = load()
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
        assert load.__wrapped__() is not None  # type: ignore[attr-defined]
    else:
        assert copy is None


def traced_fills(store: SlotStore, sources: list, n: int) -> tuple[int, int]:
    """n fills (slot i % n_slots from source i % len(sources)) under tracemalloc: (current, peak) bytes."""
    tracemalloc.start()
    try:
        for i in range(n):
            store.fill(i % store.n_slots, sources[i % len(sources)])
        return tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()


def test_many_fills_allocate_nothing() -> None:
    store = SlotStore(8, PARTS, "cpu")
    storage, ptr = store.storage, store.storage.data_ptr()
    views = [store.parts(s) for s in range(8)]
    sources = [expert_bytes(seed) for seed in range(4)]
    store.fill(0, sources[0])  # warm up
    _, peak = traced_fills(store, sources, 400)
    assert peak < min(PARTS), f"fills allocated {peak} bytes"  # no copy of a part was made
    assert store.storage is storage and store.storage.data_ptr() == ptr
    assert all(store.parts(s) is views[s] for s in range(8))
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 7), sources[3]))


def test_fill_rejects_bad_input() -> None:
    store = SlotStore(2, PARTS, "cpu")
    good = expert_bytes(0)
    with pytest.raises(ValueError, match="outside"):
        store.fill(2, good)
    with pytest.raises(ValueError, match="expected 3 parts"):
        store.fill(0, good[:2])
    too_long = np.zeros(PARTS[1] + 1, dtype=np.uint8)
    with pytest.raises(ValueError, match=f"part 1 has {PARTS[1] + 1} bytes"):
        store.fill(0, [good[0], too_long, good[2]])
    strided = np.zeros(2 * PARTS[0], dtype=np.uint8)[::2]
    with pytest.raises(ValueError, match="contiguous"):
        store.fill(0, [strided, good[1], good[2]])


def test_shorter_part_fills_the_start_of_its_slot_part() -> None:
    """Layers whose experts use a smaller type fill only the start of a part."""
    store = SlotStore(1, PARTS, "cpu")
    good = expert_bytes(0)
    store.fill(0, [good[0], good[1][:100], good[2]])
    assert np.array_equal(store.parts(0)[1][:100].numpy(), good[1][:100])


def test_construction_validates() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        SlotStore(0, PARTS, "cpu")
    with pytest.raises(ValueError, match="positive"):
        SlotStore(1, (10, 0), "cpu")
    with pytest.raises(ValueError, match="power of two"):
        SlotStore(1, PARTS, "cpu", alignment=100)
    with pytest.raises(ValueError, match="staging"):
        SlotStore(1, PARTS, "cpu", n_staging=0)


# ---- chunked, multi-threaded staging copies -------------------------------------------------

ODD = (10_007, 65_537, 4_099)  # odd sizes: segments end inside parts and inside alignment gaps


@pytest.mark.parametrize("chunk", [1, 3_000, 4_096, 10_240, 65_536, 1 << 20])
@pytest.mark.parametrize("threads", [1, 3])
def test_chunked_fill_copies_exact_bytes(chunk: int, threads: int) -> None:
    store = SlotStore(3, ODD, "cpu", alignment=256, copy_threads=threads, chunk_bytes=chunk)
    before = store.storage.clone()
    src = expert_bytes(5, ODD)
    store.fill(1, src)
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 1), src))
    # nothing outside the slot's parts was written: other slots and the alignment gaps
    written = torch.zeros_like(store.storage, dtype=torch.bool)
    for o, n in zip(store.part_offsets, ODD):
        written[1, o:o + n] = True
    assert torch.equal(store.storage[~written], before[~written])
    store.close()


def test_segments_split_at_chunk_multiples_of_slot_offsets() -> None:
    store = SlotStore(1, ODD, "cpu", chunk_bytes=8192)
    src = expert_bytes(0, ODD)
    segments = store._segments([p.numpy() for p in store.parts(0)], src)
    covered = 0
    for lo, hi, pieces in segments:
        assert lo // 8192 == (hi - 1) // 8192  # one chunk of the slot per segment
        assert hi - lo >= sum(d.size for d, _ in pieces)  # a segment may span an alignment gap
        for dst, s in pieces:
            assert dst.size == s.size > 0
        covered += sum(d.size for d, _ in pieces)
    assert covered == sum(ODD)
    assert [lo for lo, _, _ in segments] == sorted(lo for lo, _, _ in segments)
    store.close()


@pytest.mark.parametrize("chunk", [4_096, 1 << 20])
def test_chunked_fill_of_shorter_parts_writes_only_their_bytes(chunk: int) -> None:
    store = SlotStore(2, ODD, "cpu", copy_threads=2, chunk_bytes=chunk)
    full = expert_bytes(1, ODD)
    store.fill(0, full)
    short = [a[: n // 3] for a, n in zip(expert_bytes(2, ODD), ODD)]
    store.fill(0, short)
    for got, new, old in zip(slot_bytes(store, 0), short, full):
        assert np.array_equal(got[:new.size], new)
        assert np.array_equal(got[new.size:], old[new.size:])  # the rest keeps the old expert
    store.close()


def test_chunked_fills_allocate_nothing_per_fill() -> None:
    big = (300_001, 500_003, 200_001)
    store = SlotStore(4, big, "cpu", copy_threads=2, chunk_bytes=32_768)
    storage, ptr = store.storage, store.storage.data_ptr()
    sources = [expert_bytes(seed, big) for seed in range(3)]
    store.fill(0, sources[0])  # warm up: starts the threads
    current, peak = traced_fills(store, sources, 100)
    # segment lists and array views only (a few KB), never a copy of a part; nothing kept
    assert peak < 64_000, f"fills allocated {peak} bytes at peak"
    assert current < 4_000, f"fills kept {current} bytes"
    assert store.storage is storage and store.storage.data_ptr() == ptr
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 3), sources[99 % 3]))
    store.close()


def test_close_stops_the_copy_threads() -> None:
    store = SlotStore(2, ODD, "cpu", copy_threads=3, chunk_bytes=4_096)
    assert store._pool.threads == ()  # started by the first chunked fill, not before
    store.fill(0, expert_bytes(0, ODD))
    threads = store._pool.threads
    assert len(threads) == 3 and all(t.is_alive() for t in threads)
    store.close()
    assert not any(t.is_alive() for t in threads)
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.fill(1, expert_bytes(1, ODD))


def test_a_dropped_store_stops_its_copy_threads() -> None:
    import gc

    store = SlotStore(2, ODD, "cpu", copy_threads=2, chunk_bytes=4_096)
    store.fill(0, expert_bytes(0, ODD))
    threads = store._pool.threads
    del store
    gc.collect()
    for t in threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in threads)


def test_copy_pool_reports_a_worker_error_after_the_job() -> None:
    from edge_moe.host_copy import CopyPool

    pool = CopyPool(2)
    dst = np.zeros(100, dtype=np.uint8)
    good = np.ones(10, dtype=np.uint8)
    segments = [[(dst[0:10], good)], [(dst[10:20], np.ones(11, dtype=np.uint8))], [(dst[20:30], good)]]
    with pytest.raises(ValueError):
        pool.copy(segments)
    pool.copy([[(dst[50:60], good)]])  # the pool still works
    assert dst[50:60].sum() == 10
    pool.close()
    with pytest.raises(ValueError, match="at least one thread"):
        CopyPool(0)


class _StubEvent:
    def __init__(self) -> None:
        self.records = 0

    def record(self, stream: object = None) -> None:
        self.records += 1

    def synchronize(self) -> None:
        pass


class _StubStream:
    def wait_event(self, event: object) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _stub_cuda_store(monkeypatch: pytest.MonkeyPatch, sizes: tuple[int, ...], chunk: int,
                     n_slots: int = 2, n_staging: int = 2) -> SlotStore:
    """A CPU store driven through the CUDA staging path (DMAs become synchronous CPU copies):
    checks the segment and DMA bookkeeping here; the real streams are checked by the gpu tests."""
    import contextlib

    store = SlotStore(n_slots, sizes, "cpu", copy_threads=3, chunk_bytes=chunk)
    store.is_cuda = True
    store._side_stream = _StubStream()
    store._staging = [torch.full((store.slot_stride,), 0xEE, dtype=torch.uint8) for _ in range(n_staging)]
    store._staging_parts = [[buf.numpy()[o:o + n] for o, n in zip(store.part_offsets, store.part_nbytes)]
                            for buf in store._staging]
    store._staging_free = [_StubEvent() for _ in range(n_staging)]
    store._filled = [_StubEvent() for _ in range(n_slots)]
    store._last_read = [_StubEvent() for _ in range(n_slots)]
    store._next_staging = 0
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return store


@pytest.mark.parametrize("chunk", [4_096, 10_240, 1 << 20])
def test_staging_path_dmas_every_copied_byte(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _stub_cuda_store(monkeypatch, ODD, chunk)
    full, other = expert_bytes(3, ODD), expert_bytes(4, ODD)
    store.fill(0, full)
    store.fill(1, other)
    store.fill(0, [a[: n // 2 + 1] for a, n in zip(other, ODD)])  # shorter parts, staging buffer reused
    for got, new, old in zip(slot_bytes(store, 0), other, full):
        n = got.size // 2 + 1
        assert np.array_equal(got[:n], new[:n]) and np.array_equal(got[n:], old[n:])
    assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, 1), other))
    assert [e.records for e in store._filled] == [2, 1] and [e.records for e in store._staging_free] == [2, 1]
    store.close()


def test_fill_many_copies_small_experts_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five small experts in one job through two staging buffers (batches of 2, 2, 1): every
    byte lands, one DMA and one `filled` record per slot, each buffer's reuse ordered."""
    store = _stub_cuda_store(monkeypatch, ODD, 1 << 20, n_slots=5, n_staging=2)
    sources = [expert_bytes(20 + s, ODD) for s in range(5)]
    sources[3] = [a[: a.size // 3] for a in sources[3]]  # shorter parts: only their bytes
    store.fill_many([(s, src) for s, src in enumerate(sources)])
    for s, src in enumerate(sources):
        got = slot_bytes(store, s)
        assert all(np.array_equal(g[:a.size], a) for g, a in zip(got, src)), s
    assert [e.records for e in store._filled] == [1] * 5
    assert [e.records for e in store._staging_free] == [3, 2]
    store.close()


def test_fill_many_on_the_cpu_and_with_large_experts_is_fill() -> None:
    store = SlotStore(3, PARTS, "cpu", chunk_bytes=2_000)  # experts larger than a chunk: one by one
    sources = [expert_bytes(40 + s) for s in range(3)]
    store.fill_many([(s, src) for s, src in enumerate(sources)])
    assert all(np.array_equal(a, b) for s in range(3) for a, b in zip(slot_bytes(store, s), sources[s]))
    with pytest.raises(ValueError, match="outside"):
        store.fill_many([(3, sources[0])])
    store.close()


# ---- CUDA ordering ------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BIG = (24 << 20, 24 << 20, 16 << 20)  # 64 MiB a slot: a copy long enough for a race to show


def big_expert(value: int) -> list[np.ndarray]:
    return [np.full(n, value, dtype=np.uint8) for n in BIG]


def spin_gpu(ms: float) -> None:
    """Keep the current stream busy for about `ms` milliseconds (a long kernel)."""
    torch.cuda._sleep(int(ms * 2_000_000))  # ~2 GHz clock; only a lower bound matters


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("pinned_source", [False, True])
def test_read_right_after_fill_sees_the_new_bytes(pinned_source: bool) -> None:
    store = SlotStore(2, BIG, "cuda")
    compute = torch.cuda.current_stream()
    for round_, value in enumerate((7, 201, 33)):
        src = big_expert(value)
        parts = [torch.from_numpy(a).pin_memory() for a in src] if pinned_source else src
        store.fill(round_ % 2, parts)
        store.wait_filled(round_ % 2, compute)
        sums = [p.sum(dtype=torch.int64) for p in store.parts(round_ % 2)]  # read on the compute stream
        store.mark_read(round_ % 2, compute)
        assert [int(s) for s in sums] == [value * n for n in BIG]


@pytest.mark.gpu
@needs_cuda
def test_fill_waits_for_a_slow_reader_of_the_old_bytes() -> None:
    store = SlotStore(1, BIG, "cuda")
    store.fill(0, big_expert(1))
    store.wait_filled(0)
    spin_gpu(200)  # the compute stream is busy ...
    seen = [p.sum(dtype=torch.int64) for p in store.parts(0)]  # ... before this read of the old bytes
    store.mark_read(0)
    store.fill(0, big_expert(2))  # must not start before the read is done
    store.wait_filled(0)
    after = [p.sum(dtype=torch.int64) for p in store.parts(0)]
    torch.cuda.synchronize()
    assert [int(s) for s in seen] == [1 * n for n in BIG]
    assert [int(s) for s in after] == [2 * n for n in BIG]


@pytest.mark.gpu
@needs_cuda
def test_staging_ring_reuse_keeps_every_fill_intact() -> None:
    store = SlotStore(6, BIG, "cuda", n_staging=2)
    for slot in range(6):  # three rounds through a ring of two, no host sync in between
        store.fill(slot, big_expert(slot + 10))
    for slot in range(6):
        store.wait_filled(slot)
    sums = [[int(p.sum(dtype=torch.int64)) for p in store.parts(slot)] for slot in range(6)]
    assert sums == [[(slot + 10) * n for n in BIG] for slot in range(6)]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("chunk", [1 << 20, 3_000_001])
def test_pipelined_chunked_fills_are_exact(chunk: int) -> None:
    """Segments DMA'd while later ones are still copied: every byte lands, shorter parts too,
    and a read right after wait_filled sees the whole expert."""
    sizes = (BIG[0] + 7, BIG[1] - 5, BIG[2] + 1)
    store = SlotStore(3, sizes, "cuda", n_staging=2, copy_threads=4, chunk_bytes=chunk)
    rng = np.random.default_rng(0)
    sources = [[rng.integers(0, 256, n, dtype=np.uint8) for n in sizes] for _ in range(4)]
    sources[3] = [a[: len(a) // 2 + 3] for a in sources[3]]
    for round_, src in enumerate(sources):
        slot = round_ % 3
        store.fill(slot, src)
        store.wait_filled(slot)
        got = [p[:a.size].cpu().numpy() for p, a in zip(store.parts(slot), src)]  # read on the compute stream
        store.mark_read(slot)
        assert all(np.array_equal(g, a) for g, a in zip(got, src))
    store.close()


@pytest.mark.gpu
@needs_cuda
def test_gpu_fills_allocate_nothing() -> None:
    store = SlotStore(4, PARTS, "cuda")
    sources = [expert_bytes(seed) for seed in range(4)]
    store.fill(0, sources[0])
    store.synchronize()
    allocated, ptr = torch.cuda.memory_allocated(), store.storage.data_ptr()
    for i in range(200):
        store.fill(i % 4, sources[(i + 1) % 4])
        store.wait_filled(i % 4)
        store.mark_read(i % 4)
    store.synchronize()
    assert torch.cuda.memory_allocated() == allocated and store.storage.data_ptr() == ptr
    for slot in range(4):
        expected = sources[(196 + slot + 1) % 4]
        assert all(np.array_equal(a, b) for a, b in zip(slot_bytes(store, slot), expected))


@pytest.mark.gpu
@needs_cuda
def test_fill_many_waits_for_slow_readers_and_is_exact() -> None:
    """A group fill (SlotStore.fill_many, the prefill stream's) on real streams: it waits for a
    slow reader of the old bytes of every slot, and a read right after wait_filled sees all."""
    sizes = (900_000, 900_000, 800_000)  # a small expert: staging copies side by side
    store = SlotStore(6, sizes, "cuda", n_staging=4)
    rng = np.random.default_rng(1)
    old = [[np.full(n, s, dtype=np.uint8) for n in sizes] for s in range(6)]
    store.fill_many(list(enumerate(old)))
    for s in range(6):
        store.wait_filled(s)
    spin_gpu(100)
    seen = [[p.sum(dtype=torch.int64) for p in store.parts(s)] for s in range(6)]  # queued behind the spin
    store.mark_read_many(list(range(6)))
    new = [[rng.integers(0, 256, n, dtype=np.uint8) for n in sizes] for _ in range(6)]
    store.fill_many(list(enumerate(new)))
    for s in range(6):
        store.wait_filled(s)
    after = [[p.cpu().numpy() for p in store.parts(s)] for s in range(6)]
    assert [[int(t) for t in row] for row in seen] == [[s * n for n in sizes] for s in range(6)]
    assert all(np.array_equal(a, b) for s in range(6) for a, b in zip(after[s], new[s]))
    store.close()
