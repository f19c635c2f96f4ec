"""What one decode token costs: the per-layer model behind the simulator's and the planner's tok/s.

DESIGN.md ("The cost model") says which bytes a token moves; this module says how the decode
loop turns them into seconds. On CUDA the loop is serial per layer (edge_moe/decode_graphs.py):

    front graph (attention, router) + sync -> host lookup, pair table -> experts graph launched
    (the hits) while ggml computes the misses on the CPU -> join -> fills issued

so, for a token whose layer l has h_l hits, m_l misses and f_l fills (F fills, M misses in all):

    cpu(m)   = cpu_call_seconds + m x expert_bytes / dram_bandwidth     0 when m = 0
    gpu(h)   = gpu_layer_seconds + h x gpu_expert_seconds                0 when h = 0
    t_layer  = layer_seconds + max(cpu(m_l), gpu(h_l)) + f_l x fill_issue_seconds
    t_token  = max(base_token_seconds + sum over layers of t_layer,
                   F x expert_bytes / pcie_bandwidth,            a fill's copy overlaps the loop
                   (M + F) x expert_bytes / dram_bandwidth)      ... but shares PCIe and DRAM

Decode streaming (`decode_stream_max` > 0): of a layer's m misses, s are computed on the GPU
while the CPU computes the other m - s; the GPU reads them over PCIe from the page-locked GGUF
map, in place (zero copy, the default on CUDA: stream_pcie_fraction of the copy engine's rate) or
copied to its stream ring first, while the CPU's cores read DRAM too (session 12 probe: 4
experts' copies beside a 4-expert ggml call on the H100 box slowed neither much):

    t_experts(s) = s x stream_issue_seconds + (STREAM_LAYER_S if h = 0 < s)
                   + max(cpu(m - s), s x expert_bytes / (pcie_bandwidth x stream_pcie_fraction) + gpu(h + s))

and the layer takes the s that minimizes it (`stream_split`); s = 0 is the serial model above.

A pinned layer (every expert of it cached for good) runs inside a graph of such layers with no
host in the loop: resident_layer_seconds each instead of t_layer, and one graph launch per token
for the run. When every expert of the model is cached a token is one CUDA graph:
t_token = resident_token_seconds (`resident_seconds`). A layer no cache slot serves (no sets,
not pinned) costs uncached_layer_seconds instead of layer_seconds (no lookup, no experts graph)
and its misses stream at uncached_dram_gbps (repacked experts). The "no cache" baseline is
t_token with every layer such a layer.

Constants (H100 machine lent to this project: one H100 80 GB, 16 Xeon cores, Q4_0 synthetic
Qwen3-30B-A3B / Mixtral-8x7B shapes; session of 2026-11-24 unless said otherwise). The figures a
user's machine can measure in well under a second come from edge_moe/microbench.py instead
(DRAM bandwidth of the CPU expert path, ggml's per-call cost, PCIe, GPU GEMV bandwidth); the
ones below are the fallbacks or the parts no micro-benchmark covers yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from edge_moe.cache_admission import CostModel

# ---- per layer, the CUDA-graph decode path (Qwen3 shape: 48 layers, n_embd 2048) -------------
# front graph + its host sync: ~0.17-0.18 ms per layer. GPU time of ~40 tiny kernels: it scales
# with the kernel count, not with the dense bytes (their bytes / GPU bandwidth is a lower bound).
LAYER_FRONT_S = 0.175e-3
FRONT_KERNELS = 40
HOST_LOOKUP_S = 0.10e-3  # cache lookup + pair table on the host, per layer
EXPERTS_LAUNCH_S = 0.035e-3  # launching the experts graph, per layer
GRAPH_LAUNCH_S = EXPERTS_LAUNCH_S  # launching one graph of pinned layers, per token
JOIN_S = 0.03e-3  # waiting for / merging the CPU's and the GPU's halves, per layer
LAYER_HOST_S = HOST_LOOKUP_S + EXPERTS_LAUNCH_S + JOIN_S  # the host's per-layer Python, ~0.165 ms
LAYER_SECONDS = LAYER_FRONT_S + LAYER_HOST_S  # 0.34 ms per layer whatever the routing
# A layer no cache slot serves (pinned layers and no sets): no lookup, no pair table, no experts
# graph, no admissions; ids to the host, the CPU call's inputs and the join remain. Session 6's
# Qwen3 6 GiB profile read ~0.10 ms a layer besides its front and ggml call, but part of that was
# the token's eager prologue (rope tables, mask, embedding: 1.5-1.8 ms a token, now one graph).
# Session 9 (H100 box, no profiler syncs): a layer's time outside its CPU expert phase was 0.192 ms
# (Qwen3 6 GiB, 36 such layers) and 0.183 ms (12 GiB, 17). Session 10 took the eager zero / copy
# launches off that path, cut its Python and fused the front's norms: 0.113-0.123 ms outside the
# CPU entry (ABAB, call E) plus ~0.025 ms inside it beyond ggml's compute (forward_token's checks
# and copies): the whole of such a layer beside its ggml call (front, sync and host).
# Session 11's decode attention kernel (decode_attn.py, reading keys up to the position only)
# took ~24 us a layer off every layer's front at a 512 + 128-token context (Qwen3 12 GiB decode
# 80 -> 88 tok/s, ABAB, call D): 0.145 -> 0.121 ms.
UNCACHED_LAYER_S = 0.121e-3
# ---- the CPU miss path: one ggml call per layer with misses, T = 1 ---------------------------
# Per call, m distinct 2.65 MB experts, 16 threads spinning between calls (not OMP passive):
# m=1 0.08 ms, m=3 0.17-0.18 ms, m=8 0.46 ms. With the ~47 GB/s slope that path reaches
# (Mixtral's 99 MB experts: 46-58 GB/s), m=1 leaves 0.08 - 2.65 MB / 47 GB/s = ~0.025 ms fixed
# (m=3 then 0.19, m=8 0.48 ms). Fallback only: microbench.measure_cpu_call_us measures it.
CPU_CALL_FIXED_S = 25e-6
# The layers no cache slot serves have their CPU experts repacked into ggml's interleaved layout
# (executor.cpu_repack); microbench.py measures the zero-copy path. Repacked / zero-copy on the
# H100 box, T = 1, 16 threads, OpenMP build (cpu_experts.py's table): Mixtral 1.02-1.20, Qwen3
# 1.13-1.15.
REPACK_DRAM_GAIN = 1.12
# ---- fills ------------------------------------------------------------------------------------
# Host time a fill costs the decode thread. With the staging memcpy on the decode thread (up to
# 2026-11-24) one 2.65 MB fill cost it 0.5-1.2 ms; with fills issued to a background thread it
# costs ~0.05 ms, the copy (DRAM -> pinned staging -> PCIe) overlapping the loop. The model
# follows the background-thread design: FILL_ISSUE_SYNC_S is the older figure (its midpoint), for
# judging results measured before it (benchmarks/planner_accuracy.py).
FILL_ISSUE_S = 0.05e-3
FILL_ISSUE_SYNC_S = 0.85e-3
# Host time a decode step's streaming costs (H100 box, session 12, Qwen3 6 GiB, 4 of 8 misses
# streamed in 36 layers: +6.4 ms of host time a token besides the layers' experts graphs, +1.9 ms
# for those): ~44 us an expert (its three copies, batched into one cudaMemcpyBatchAsync or
# not: the same within noise, so the runtime's call is not where it goes) and ~50 us a layer that
# streams and has no hit (its experts graph, launched for the streamed experts alone).
STREAM_ISSUE_S = 44e-6
STREAM_LAYER_S = 50e-6
# Read in place (zero copy, session 13): the host only writes three offsets an expert into the
# pair table (ISSUE: an estimate, not measured apart), and the kernels read the map over PCIe at
# 0.87 of cudaMemcpyAsync's rate (call I: 46.8 against 53.9 GB/s for 8 Qwen3 experts, 48.8 against
# 52.8 for Mixtral's). In an A/B with forced rules (call J, Qwen3 6 GiB: 50.7 tok/s with none,
# 56.9 / 58.9 / 58.3 streaming 3 / 4 / 5 of 8 misses; 12 GiB: 86.2 -> 98.5 at 4) this model picks 4.
ZERO_COPY_ISSUE_S = 3e-6
ZERO_COPY_PCIE_FRACTION = 0.87
# ---- the GPU ----------------------------------------------------------------------------------
# Every expert cached (resident): one CUDA graph per token. Qwen3 shape, torch.profiler on one
# decode token (scratch-run of session 6, 2026-11-24; int8 expert kernels, fused q/k): 47 kernels
# and ~120 us of GPU time per layer, of which the expert launches ~26 us: the other 47 kernels
# ~2.0 us each. (Session 4, before those kernels: 52 kernels of ~2.5 us.) The fused routing of
# resident layers (edge_moe/route_kernels.py) then replaced ~11 of them (softmax, top-k gather
# and sort, the weights' sum, the pair table's index_select, aranges, division and cat, two
# copies) by one: 36. Whole tokens measured 4.9 ms (205 tok/s) with it, 6.1 ms without. Session
# 10's fused residual adds + norms (norm_kernels.py) took ~6 more: 30 fits its all-GPU rows (Qwen3
# 4.06 ms a token, Mixtral 4.80; session 10 call F / H). Session 11's decode attention kernel
# (two launches instead of cuDNN's SDPA over the whole KV bucket and a strided copy) took ~24 us a
# layer more: 20 fits its all-GPU rows (Qwen3 2.87 ms a token: 17; Mixtral 4.07 ms: 23; call E/F).
# Session 14 folded the router's GEMV into the routing launch, which also zeroes the experts'
# float32 accumulator (no fill, no cast copy): 14 kernels a Qwen3 layer, 49 us of kernel time
# (torch.profiler). With the expert figures below, 18 fits its all-GPU rows (Qwen3 2.645 ms a
# token: 17.7; Mixtral 3.87 ms: 19.8; session 14 calls F / H). The norms then quantized h for
# the matvecs after them: 12 kernels, 47.4 us; Qwen3 2.54 ms a token (call L: pred/meas 0.94).
PER_KERNEL_S = 2.0e-6
KERNELS_PER_LAYER = 18
# Q4_0 expert matvecs (benchmarks/quant_kernels_bench.py, one decode layer, CUDA-graph GPU time,
# H100, 2026-11-24, the int8/dp4a kernels; README "Quantized experts on the GPU"): Mixtral
# 4096x14336 top-2 (198 MB) in 80.7 us, Qwen3 2048x768 top-8 (21.2 MB) in 26.0 us, the fp16 GEMV
# at 2,730 GB/s in the same runs. Fixed part + bytes / rate fits both: the bytes stream at
# 1.18 x the fp16 GEMV's rate (3.2 TB/s, near the HBM's peak; cuBLAS's fp16 GEMV does not reach
# it) after ~19 us per layer for the four launches (quantize x, gate+up, quantize act, down).
# The float kernels before them: 0.32 and a 21 us fixed part. Session 14 gave short rows (Qwen3's
# down) several rows a program (quant_ops.matvec_rows); its sweep (call C, graph-timed): Qwen3
# gate+up 8.4 us + down 7.5 + two quantize launches 2.7 = 18.5 us, Mixtral 48.6 + 29.2 + 2.7 =
# 80.5 us: the bytes at 1.05 x the fp16 GEMV's rate after an 11 us fixed part.
Q4_0_GEMV_FRACTION = 1.05
EXPERT_KERNELS_FIXED_S = 11e-6
# Without a CUDA-graph decode path (the CPU device): per layer, a first estimate, not measured.
CPU_DEVICE_LAYER_S = 40e-6


def _check(name: str, value: float, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"MachineFigures.{name} must be a {'positive' if positive else 'non-negative'} "
                         f"number, got {value!r}")


@dataclass(frozen=True)
class MachineFigures:
    """Bandwidths (GB/s, 1e9 bytes/s) and seconds the per-layer token model needs (module docstring).

    The per-layer fields default to 0 (not modelled), so a bare MachineFigures(dram, pcie, gpu)
    is the bandwidth-only model; `decode_figures` fills them in for a model on a machine.
    """

    dram_gbps: float  # CPU expert path reading host DRAM (net of the per-call fixed cost)
    pcie_gbps: float  # host to GPU copies (fills)
    gpu_expert_seconds: float  # one cached expert's FFN on the GPU (its bytes at the kernels' rate)
    base_token_seconds: float = 0.002  # per token, outside the layers (LM head, embedding, sampling)
    layer_seconds: float = 0.0  # per layer whatever the routing: front graph + sync + host work
    uncached_layer_seconds: float | None = None  # the same for a layer no slot serves; None: layer_seconds
    uncached_dram_gbps: float | None = None  # the CPU path on such a layer (repacked); None: dram_gbps
    cpu_call_seconds: float = 0.0  # fixed part of one ggml call (a layer with misses)
    gpu_layer_seconds: float = 0.0  # fixed part of a layer's hit kernels (a layer with hits)
    fill_issue_seconds: float = 0.0  # decode-thread time to issue one fill
    resident_token_seconds: float | None = None  # every expert cached: one graph; None = no such mode
    # a pinned layer inside a graph of such layers (no host); None: priced as a host layer of k hits
    resident_layer_seconds: float | None = None
    decode_stream_max: int = 0  # the most misses of a decode layer streamed (half the ring); 0: none
    stream_issue_seconds: float = 0.0  # decode-thread time to start one streamed expert's copy
    stream_layer_seconds: float = 0.0  # ... and to launch the experts graph of a layer with no hit for them
    stream_pcie_fraction: float = 1.0  # a streamed expert's PCIe rate over pcie_gbps (zero copy: < 1)

    def __post_init__(self) -> None:
        if not isinstance(self.decode_stream_max, int) or self.decode_stream_max < 0:
            raise ValueError(f"MachineFigures.decode_stream_max must be an int >= 0, got {self.decode_stream_max!r}")
        for name in ("dram_gbps", "pcie_gbps", "gpu_expert_seconds"):
            _check(name, getattr(self, name), positive=True)
        if not 0.0 < self.stream_pcie_fraction <= 1.0:
            raise ValueError(f"MachineFigures.stream_pcie_fraction must be in (0, 1], got {self.stream_pcie_fraction!r}")
        for name in ("base_token_seconds", "layer_seconds", "cpu_call_seconds", "gpu_layer_seconds",
                     "fill_issue_seconds", "stream_issue_seconds", "stream_layer_seconds"):
            _check(name, getattr(self, name), positive=False)
        for name in ("resident_token_seconds", "resident_layer_seconds", "uncached_layer_seconds",
                     "uncached_dram_gbps"):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), positive=True)

    @property
    def dram_bandwidth(self) -> float:
        return self.dram_gbps * 1e9

    @property
    def pcie_bandwidth(self) -> float:
        return self.pcie_gbps * 1e9

    def cost_model(self, expert_bytes: int) -> CostModel:
        """The same figures in the form the reuse admission rule weighs fills with."""
        return CostModel(expert_bytes, self.dram_bandwidth, self.pcie_bandwidth, self.gpu_expert_seconds)

    def cpu_seconds(self, misses: int, expert_bytes: int, served: bool = True) -> float:
        """One layer's ggml call for `misses` distinct experts (no call without a miss); `served`:
        a layer with cache slots (zero-copy experts), else repacked ones (`uncached_dram_gbps`)."""
        return self.cpu_call_seconds + misses * expert_bytes / self._dram(served) if misses > 0 else 0.0

    def _dram(self, served: bool) -> float:
        """Bytes/s of the CPU expert path on a layer with cache slots or on one without."""
        if served or self.uncached_dram_gbps is None:
            return self.dram_bandwidth
        return self.uncached_dram_gbps * 1e9

    def gpu_seconds(self, hits: int) -> float:
        return self.gpu_layer_seconds + hits * self.gpu_expert_seconds if hits > 0 else 0.0

    def experts_seconds(self, hits: int, misses: int, streamed: int, expert_bytes: int, served: bool = True,
                        ) -> float:
        """A layer's expert phase with `streamed` of its misses copied to the GPU (module docstring)."""
        if streamed == 0:
            return max(self.cpu_seconds(misses, expert_bytes, served), self.gpu_seconds(hits))
        gpu = self.gpu_seconds(hits + streamed) + streamed * expert_bytes / (self.pcie_bandwidth
                                                                              * self.stream_pcie_fraction)
        host = streamed * self.stream_issue_seconds + (self.stream_layer_seconds if hits == 0 else 0.0)
        return host + max(self.cpu_seconds(misses - streamed, expert_bytes, served), gpu)

    def stream_split(self, hits: int, misses: int, expert_bytes: int, served: bool = True) -> int:
        """How many of a decode layer's misses to stream: the s in 0..min(misses, decode_stream_max)
        with the shortest expert phase (the smallest such s on ties)."""
        most = min(misses, self.decode_stream_max)
        return min(range(most + 1), key=lambda s: (self.experts_seconds(hits, misses, s, expert_bytes, served), s))

    def decode_stream_rule(self, k: int, expert_bytes: int, served: bool = False) -> tuple[int, ...] | None:
        """GpuExpertsConfig.decode_stream: `stream_split` for 0..k misses of a layer with no hits
        (None when nothing would be streamed)."""
        rule = tuple(self.stream_split(0, m, expert_bytes, served) for m in range(k + 1))
        return rule if any(rule) else None

    def layer_time(self, hits: int, misses: int, fills: int, expert_bytes: int, served: bool = True) -> float:
        """One layer of the serial loop (module docstring), fills' copies not included; `served`:
        the cache has slots for this layer (else no lookup, no experts graph)."""
        fixed = self.layer_seconds if served or self.uncached_layer_seconds is None else self.uncached_layer_seconds
        streamed = self.stream_split(hits, misses, expert_bytes, served)
        return (fixed + self.experts_seconds(hits, misses, streamed, expert_bytes, served)
                + fills * self.fill_issue_seconds)

    def pinned_seconds(self, pinned: int, k: int) -> float:
        """`pinned` layers run as one graph (their k routed experts all hits)."""
        if pinned == 0:
            return 0.0
        if self.resident_layer_seconds is None:
            return pinned * self.layer_time(k, 0, 0, 1)
        return GRAPH_LAUNCH_S + pinned * self.resident_layer_seconds

    def token_seconds(self, layers: Iterable[tuple[int, int, int]], expert_bytes: int,
                      resident: bool = False, pinned: int = 0, k: int = 0, served: bool = True) -> float:
        """One token from its host layers' (hits, misses, fills) and `pinned` layers of k hits
        each; `resident`: every expert is cached (the one-graph token, where the figures have one);
        `served`: the host layers have cache slots (sets), else they are priced as uncached."""
        if resident and self.resident_token_seconds is not None:
            return self.resident_token_seconds
        serial, misses, fills, streamed = self.base_token_seconds + self.pinned_seconds(pinned, k), 0, 0, 0
        for h, m, f in layers:
            serial += self.layer_time(h, m, f, expert_bytes, served)
            misses += m
            fills += f
            streamed += self.stream_split(h, m, expert_bytes, served)
        return max(serial, (fills + streamed) * expert_bytes / self.pcie_bandwidth,
                   (misses - streamed + fills) * expert_bytes / self._dram(served))

    def no_cache_seconds(self, n_layers: int, k: int, expert_bytes: int) -> float:
        """Every lookup a CPU miss, no fills, nothing streamed (the stream ring serves a cache's layers)."""
        serial = replace(self, decode_stream_max=0)
        return serial.token_seconds([(0, k, 0)] * n_layers, expert_bytes, served=False)


def quant_gbps(gpu_gemv_gbps: float) -> float:
    """GB/s the GPU's Q4_0 matvec kernels stream, from the fp16 GEMV figure (Q4_0_GEMV_FRACTION)."""
    return Q4_0_GEMV_FRACTION * gpu_gemv_gbps


def resident_seconds(n_layer: int, k: int, slot_bytes: int, gpu_gemv_gbps: float,
                     base_token_seconds: float) -> float:
    """Every expert cached: one graph of ~KERNELS_PER_LAYER kernels per layer plus the k hits'
    matvecs per layer (Qwen3 shape: 48 x (18 x 2.0 + 11 + 8 x 0.93) us = 2.62 ms; 2.645 measured, session 14)."""
    expert_s = slot_bytes / (quant_gbps(gpu_gemv_gbps) * 1e9)
    return base_token_seconds + n_layer * resident_layer_seconds(k, expert_s)


def resident_layer_seconds(k: int, gpu_expert_seconds: float) -> float:
    """One layer inside a graph, its k routed experts all cached: its kernels and the k matvecs
    (`gpu_expert_seconds` each)."""
    return KERNELS_PER_LAYER * PER_KERNEL_S + EXPERT_KERNELS_FIXED_S + k * gpu_expert_seconds


def decode_figures(*, n_layer: int, k: int, slot_bytes: int, layer_dense_bytes: float, outside_dense_bytes: float,
                   dram_gbps: float, pcie_gbps: float, gpu_gemv_gbps: float,
                   cpu_call_seconds: float = CPU_CALL_FIXED_S, fill_issue_seconds: float = FILL_ISSUE_S,
                   all_cached: bool = False, decode_stream_max: int = 0, zero_copy: bool = True) -> MachineFigures:
    """The figures of a CUDA decode for one model on one machine. `layer_dense_bytes`: one layer's
    non-expert weights as the GPU holds them (a lower bound of the front's time at the kernels'
    rate); `outside_dense_bytes`: what a token reads outside the layers (the LM head);
    `all_cached`: the cache holds every expert, so a token in steady state is one graph;
    `decode_stream_max`: the most misses a decode layer may stream (half the stream ring; 0: none);
    `zero_copy`: streamed experts are read in place (else copied to the ring: EDGE_MOE_ZERO_COPY=0)."""
    qbw = quant_gbps(gpu_gemv_gbps) * 1e9
    base = outside_dense_bytes / qbw
    front = max(LAYER_FRONT_S, layer_dense_bytes / qbw)
    resident = resident_seconds(n_layer, k, slot_bytes, gpu_gemv_gbps, base) if all_cached else None
    return MachineFigures(dram_gbps=dram_gbps, pcie_gbps=pcie_gbps, gpu_expert_seconds=slot_bytes / qbw,
                          base_token_seconds=base, layer_seconds=front + LAYER_HOST_S,
                          uncached_layer_seconds=max(UNCACHED_LAYER_S, layer_dense_bytes / qbw),
                          uncached_dram_gbps=dram_gbps * REPACK_DRAM_GAIN,
                          cpu_call_seconds=cpu_call_seconds, gpu_layer_seconds=EXPERT_KERNELS_FIXED_S,
                          fill_issue_seconds=fill_issue_seconds, resident_token_seconds=resident,
                          resident_layer_seconds=resident_layer_seconds(k, slot_bytes / qbw),
                          decode_stream_max=decode_stream_max,
                          stream_issue_seconds=ZERO_COPY_ISSUE_S if zero_copy else STREAM_ISSUE_S,
                          stream_layer_seconds=STREAM_LAYER_S,
                          stream_pcie_fraction=ZERO_COPY_PCIE_FRACTION if zero_copy else 1.0)


def prefill_tps(chunk: int, *, n_layer: int, n_expert: int, k: int, expert_bytes: int, n_embd: int, n_ff: int,
                cached_per_layer: int, dense_s: float, dram_gbps: float, gpu_gbps: float | None,
                layer_s: float) -> float:
    """First estimate of prefill tok/s, bandwidth only (CPU and GPU compute ignored, so it is
    optimistic for large chunks): per chunk of `chunk` tokens each layer touches nearly every
    expert once; cached ones are read from VRAM (fp16 after dequantization), the others by the
    CPU from DRAM; `layer_s`: the fixed time a layer costs (its loop overhead and ggml call)."""
    touched = n_expert * (1 - (1 - k / n_expert) ** chunk)
    on_cpu = max(touched - cached_per_layer, 0.0)
    gpu = 0.0 if gpu_gbps is None else min(cached_per_layer, touched) * 6 * n_embd * n_ff / (gpu_gbps * 1e9)
    per_layer = max(on_cpu * expert_bytes / (dram_gbps * 1e9), gpu) + layer_s
    return chunk / (dense_s + n_layer * per_layer)
