"""When a missed expert of a prefill call is streamed to the GPU instead of computed on the CPU.

A missed expert that many tokens of one call use is cheaper to copy to the GPU and compute
there than to compute on the CPU: the CPU's time grows with the tokens, the copy's does not.
`stream_threshold` is the crossover; `stream_vram_bytes` what the ring of stream slots
costs in VRAM (the planner reserves it). Used by edge_moe/gpu_experts.py and the planner.
"""

from __future__ import annotations

import math
import os

from edge_moe.gpu_slots import CHUNK_BYTES

# Streaming rule: PCIe through pinned staging (the ~49 GB/s link, with the staging copy on
# top), and what ggml's quantized matmuls do on all CPU cores for a prefill's misses: a
# 512-token Qwen3 prefill at 12 GiB computed ~554 GFLOP of misses in 2.88 s on the H100 box's
# 16 cores (~0.19 TFLOP/s, 2026-11-24; the first estimate, 1 TFLOP/s, was 5x too high).
STREAM_PCIE_BYTES_PER_S = 25e9
CPU_EXPERT_FLOPS = 0.2e12
# A streamed expert's host side, measured on the H100 box (benchmarks/fill_bench.py): the
# staging copy runs at 5.9 GB/s on one thread (experts up to gpu_slots.CHUNK_BYTES, Qwen3's)
# and 23 GB/s on 8 (larger ones, Mixtral's), and each expert costs ~0.1 ms of launches and
# waits besides. Without these, 2.65 MB experts were streamed from 11 tokens on, and a
# 512-token Qwen3 prefill at 12 GiB spent ~1.8 s streaming ~1 ms per expert.
STAGING_BYTES_PER_S_ONE, STAGING_BYTES_PER_S_MANY = 5.9e9, 23e9
STREAM_FIXED_S = 1e-4
STREAM_SLOTS = 2  # the smallest ring: one expert computed while the next is copied
# Small experts stream in groups: a group's fills are one job (SlotStore.fill_many, staging
# copies side by side) and its compute one pass of the hit kernels (two launches), while the
# next group is copied into the other half of the ring. Streaming Qwen3's 2.65 MB experts one
# at a time cost ~0.9 ms each (host work and a one-thread staging copy): 110 ms per layer of
# a 512-token prefill, 2 s of the 2.4 s prefill at 12 GiB (H100 box, 2026-11-24).
STREAM_RING_BYTES = 256 << 20  # VRAM the ring may take (two groups)
STREAM_GROUP_MAX = 16


def zero_copy_enabled() -> bool:
    """Whether decode streaming reads streamed experts in place from the page-locked map (the
    default) or copies them to the ring first (EDGE_MOE_ZERO_COPY=0, A/B runs): the executor
    and the planner's cost figures both follow it."""
    return os.environ.get("EDGE_MOE_ZERO_COPY", "1") != "0"


def stream_slots_for(slot_bytes: int) -> int:
    """Slots of the stream ring: two groups of up to STREAM_GROUP_MAX experts within
    STREAM_RING_BYTES (Qwen3's 2.65 MB: 2 x 16; Mixtral's 99 MB: 2 x 1)."""
    return 2 * max(1, min(STREAM_GROUP_MAX, STREAM_RING_BYTES // (2 * slot_bytes)))


def stream_threshold(expert_bytes: int, n_embd: int, n_ff: int,
                     pcie_bytes_per_s: float = STREAM_PCIE_BYTES_PER_S,
                     cpu_flops: float = CPU_EXPERT_FLOPS) -> int:
    """Fewest tokens of one call for which copying a missed expert to the GPU beats computing
    it on the CPU: copy < n x 6 E F / cpu_flops (the CPU is compute-bound there; with few
    tokens it is DRAM-bound and reads the bytes once, no slower than the copy), the copy being
    STREAM_FIXED_S + expert_bytes at the slower of PCIe and the staging copy.
    Never below 2: a decode step's misses stay on the CPU (a fill is the admission's call)."""
    grouped = stream_slots_for(expert_bytes) > STREAM_SLOTS  # several experts' copies side by side
    staging = STAGING_BYTES_PER_S_ONE if expert_bytes <= CHUNK_BYTES and not grouped else STAGING_BYTES_PER_S_MANY
    copy_s = STREAM_FIXED_S + expert_bytes / min(pcie_bytes_per_s, staging)
    cpu_s_per_token = 6 * n_embd * n_ff / cpu_flops
    return max(2, math.ceil(copy_s / cpu_s_per_token))


def stream_vram_bytes(slot_bytes: int, n_embd: int, n_ff: int, dtype_bytes: int = 2,
                      n_slots: int | None = None) -> int:
    """Device bytes of the stream ring (None: `stream_slots_for`) and the dequantization
    scratch (one [F, E] matrix)."""
    n = stream_slots_for(slot_bytes) if n_slots is None else n_slots
    return n * slot_bytes + n_embd * n_ff * dtype_bytes
