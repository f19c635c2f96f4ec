"""Missed experts computed on the GPU from bytes copied for the call: `ExpertStreaming`, a mixin
of edge_moe/gpu_experts.py's `GpuExperts`, which owns the store, the ring and the page-locked
views these methods use.

Prefill (`stream_plan`, `_compute_streamed`): a missed expert that many tokens of one call
use is copied through the stream ring in groups of half the ring (the next group's copy
overlapping this group's compute) and computed as hits of its ring slots (module docstring of
gpu_experts.py).

Decode (`decode_stream_count`, `zero_copy_offsets`, `stream_decode`): of a host layer's m
misses, the planner's rule (`GpuExpertsConfig.decode_stream`, from
cost_model.MachineFigures.stream_split) sends some to the layer's experts graph while ggml
computes the rest on the CPU: the GPU's PCIe reads and the CPU's DRAM reads overlap. On CUDA the
kernels read those experts in place from the page-locked GGUF map (`zero_copy_offsets`: byte
offsets of the mapped pages relative to the slot storage, negative where the map lies below it):
no copy, no ring slot, no event, ~46 GB/s over PCIe against the copy engine's ~53 (H100 box,
session 13 call I, results identical to reading the same bytes from device memory).
EDGE_MOE_ZERO_COPY=0 (and the CPU device, in tests) copies them instead to one half of the ring,
from raw page-locked addresses in one batched copy (`stream_decode`, `SlotStore.copy_now`); the
halves alternate between steps, so one step's writes never meet the previous step's reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from edge_moe.gpu_slots import SlotStore


class ExpertStreaming:
    # GpuExperts' state (gpu_experts.py sets it)
    store: "SlotStore | None"
    config: Any
    cache: Any
    cfg: Any
    device: torch.device
    stream_min_tokens: int | None
    n_streamed: int
    n_streamed_decode: int
    use_triton: bool
    _ring: list[int]
    _next_half: int
    _decode_stream_on: bool
    _zero_copy: bool
    _host_views: dict[int, list[torch.Tensor]]
    _host_ptrs: dict[int, list[tuple[int, int]]]
    _unwaited: set[int]
    _compute: torch.cuda.Stream | None
    _compute_triton: Any
    _compute_reference: Any
    _expert_parts: Any

    def stream_plan(self, ids: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """[T, k] bool: the misses computed on the GPU from streamed bytes in this call (their
        expert is used by at least `stream_min_tokens` of its tokens); the CPU does the rest."""
        n = self.stream_min_tokens
        if n is None or ids.shape[0] < n:
            return np.zeros(ids.shape, dtype=bool)
        uses = np.bincount(ids[~hit], minlength=self.cfg.n_expert)  # [n_expert] missed uses
        return ~hit & (uses >= n)[ids]

    def _compute_streamed(self, layer: int, h: torch.Tensor, weights: torch.Tensor, ids: np.ndarray,
                          streamed: np.ndarray, y: torch.Tensor) -> None:
        """The streamed experts through the ring, in groups of half the ring: fill a group (one
        job, `SlotStore.fill_many`), compute it as hits of its ring slots (one pass of the hit
        kernels), free it. The next group is filled into the other half while this one is
        computed; a ring slot's refill waits on the device for the kernels that read it
        (mark_read), never on the host."""
        assert self.store is not None
        accumulate = self._compute_triton if self.use_triton else self._compute_reference
        experts = np.unique(ids[streamed])
        half = max(1, len(self._ring) // 2)
        groups = [experts[i:i + half] for i in range(0, len(experts), half)]

        double = len(self._ring) >= 2 * half  # a one-slot ring fills each group after the last one's reads

        def ring_slots(g: int) -> list[int]:  # group g's slots: one half of the ring, alternating
            base = (g % 2) * half if double else 0
            return self._ring[base:base + len(groups[g])]

        def issue(g: int) -> None:
            self.store.fill_many([(slot, self._expert_parts(layer, int(e))) for slot, e in zip(ring_slots(g), groups[g])])

        if double:
            issue(0)
        for g, group in enumerate(groups):
            if not double:
                issue(g)
            elif g + 1 < len(groups):
                issue(g + 1)
            slots = ring_slots(g)
            table = np.full(ids.shape, -1, dtype=np.int64)  # [T, k]: this group's pairs as hits
            for slot, expert in zip(slots, group):
                table[streamed & (ids == expert)] = slot
                self.store.wait_filled(slot)
            accumulate(layer, h, weights, table, y)
            self.store.mark_read_many(slots)
        self.n_streamed += len(experts)

    def decode_stream_count(self, layer: int, misses: int) -> int:
        """How many of a decode step's `misses` in `layer` to stream (`GpuExpertsConfig.decode_stream`):
        0 without a cache or ring, or where the layer's bytes are not page-locked on CUDA (a
        staging copy would cost the CPU the time the stream saves)."""
        rule = self.config.decode_stream if self.config is not None else None
        if rule is None or misses == 0 or self.cache is None or not self._ring or not self._decode_stream_on:
            return 0
        if self.device.type == "cuda" and layer not in self._host_views:
            return 0
        return min(rule[min(misses, len(rule) - 1)], max(1, len(self._ring) // 2))

    def zero_copy_offsets(self, layer: int, experts: list[int]) -> np.ndarray | None:
        """int64 [3, s]: byte offsets of `experts`' gate, up and down in the page-locked GGUF map,
        relative to the slot storage, for the decode kernels' pair table (they read the bytes in
        place over PCIe); None where they cannot (not CUDA, the layer not page-locked, or
        EDGE_MOE_ZERO_COPY=0): then `stream_decode` copies them."""
        ptrs = self._host_ptrs.get(layer)
        if ptrs is None or not self._zero_copy or self.store is None or self.device.type != "cuda":
            return None
        base = self.store.storage.data_ptr()
        e = np.asarray(experts, dtype=np.int64)
        self.n_streamed += len(experts)
        self.n_streamed_decode += len(experts)
        # even (32-byte aligned GGUF data, even bytes an expert): never the -1 of a miss
        return np.stack([p - base + e * per for p, per in ptrs])

    def stream_decode(self, layer: int, experts: list[int]) -> list[int]:
        """Copy `experts` of `layer` into one half of the ring now (`SlotStore.fill_now`; the
        halves alternate, so the previous step's reads and these writes do not meet) and return
        their ring slots; the next `wait_hits` on them makes the compute stream wait for the copies."""
        assert self.store is not None
        half = max(1, len(self._ring) // 2)
        base = self._next_half * half if len(self._ring) >= 2 * half else 0
        self._next_half ^= 1
        slots = self._ring[base:base + len(experts)]
        ptrs = self._host_ptrs.get(layer)
        if ptrs is not None and self.store.can_copy_now:  # raw addresses: ~6 us a copy
            self.store.copy_now(slots, [[(p + e * per, per) for p, per in ptrs] for e in experts], self._compute)
        else:  # the CPU device (tests), or no runtime copy function: tensor copies, waited per slot
            for slot, expert in zip(slots, experts):
                self.store.fill_now(slot, self._expert_parts(layer, expert))
                self._unwaited.add(slot)
        self.n_streamed += len(experts)
        self.n_streamed_decode += len(experts)
        return slots

