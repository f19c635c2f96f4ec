"""The planner: from model, hardware and (optionally) routing statistics to a run plan.

Reads GGUF metadata and tensor sizes only, never the weights. Choices, each explained in
`Plan.notes`:

- device: cuda when there is a GPU and the non-expert ("dense") weights, the KV cache and a
  prefill chunk's workspace fit in free VRAM minus the profile's margin; else cpu.
- dense weights on CUDA: in the format the executor's dense_format "auto" picks there (their
  GGUF blocks where the kernels read them, `dense_weights.dense_device_bytes`), so the expert
  slots get what quantized dense weights save.
- total VRAM budget (`--vram-budget`, optional): the same arithmetic within
  min(free - margin, budget - CUDA_CONTEXT_BYTES), so dense + KV + workspace + slots + the
  CUDA context stay within the budget (what "the same VRAM budget as llama.cpp" means).
- context: the user's, else the profile's default, capped at the training context, reduced
  (in steps of 256) until dense + KV + workspace fit.
- expert-slot budget: the VRAM that remains; slots hold experts in their GGUF block format
  (expert_bytes.slot_nbytes), so the geometry is CacheConfig.from_budget on those bytes.
- placement: pinned layers (the last P layers keep every expert and run as CUDA graphs with no
  host round trip, llama.cpp's whole-layer placement) for P in {0, P_max / 2, P_max}, the
  slots left over as N sets x M ways for the other layers, and P_max with no sets (the other
  layers then skip the cache's host work: lookups, pair tables, admissions); each is simulated
  (edge_moe/simulator.py) with admission "all" and "reuse" on the routing trace (given, else
  uniform random routing, which is pessimistic: real routing is skewed) and the fastest is
  kept; if no cache beats them, no cache.
- prediction: decode tok/s is the simulator's replay priced by edge_moe/cost_model.py's
  per-layer model of the decode loop (figures measured by edge_moe/microbench.py where it
  can, the cost model's documented constants for the rest); a cache that holds every expert is
  priced as its steady state, one CUDA graph per token. Prefill tok/s is a first estimate
  (cost_model.prefill_tps), or streaming every expert over PCIe where that is faster.
- prefill streaming (cuda): the workspace includes the stream ring and its fp16 dequantization
  scratch (gpu_experts.stream_vram_bytes), which the executor allocates with or without a cache.

Explicit user flags (`PlanOverrides`) always win and are recorded in the notes. The plan's
types (`Plan`, `PlanOverrides`) and its text (`format_plan`) are in edge_moe/plan.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_moe.cost_model import (CPU_DEVICE_LAYER_S, LAYER_SECONDS, MachineFigures,
                                 decode_figures, prefill_tps)
from edge_moe.expert_cache import CacheConfig, ReplacePolicy, parse_replace_policy
from edge_moe.hardware import GIB, HardwareInfo
from edge_moe.microbench import MachineMeasurements, cpu_call_seconds, expert_shape_key
from edge_moe.placement import candidate_placements, placement_text
from edge_moe.plan import RUNTIME_RESERVE_BYTES, Plan, PlanOverrides
from edge_moe.plan import ALLOCATOR_SLACK_BYTES, CUDA_CONTEXT_BYTES, format_plan  # noqa: F401  (re-exported)
from edge_moe.profiles import HardwareProfile, resolve_threads
from edge_moe.simulator import admission_config, simulate

CTX_STEP = 256  # context is reduced in these steps
MIN_CTX = 512  # below this the dense part rather goes to the CPU than cripple the context
SYNTHETIC_TOKENS = 256
# Used when neither a measurement nor the profile gives a GPU figure (a conservative laptop GPU).
FALLBACK_PCIE_GBPS, FALLBACK_GPU_GBPS = 12.0, 256.0


@dataclass(frozen=True)
class _ModelSizes:
    n_params_dense: int
    dense_cuda_bytes: int  # the dense weights on CUDA at fp16, in the format "auto" picks there
    dense_cuda_format: str
    expert_bytes: int
    n_layer: int
    n_expert: int
    k: int
    n_embd: int
    n_ff: int
    n_head: int
    n_vocab: int
    n_ctx_train: int
    kv_bytes_per_token: int  # fp16 K and V of every layer
    slot_bytes: int  # one cache slot (quantized)


def _model_sizes(model_path: str | Path) -> _ModelSizes:
    """Sizes from the GGUF header (the mmap is opened, no tensor byte is read)."""
    from edge_moe.dense_weights import choose_dense_format, dense_device_bytes
    from edge_moe.gguf_file import GGUFFile
    from edge_moe.expert_bytes import quantized_expert_bytes, slot_nbytes
    from edge_moe.model_config import read_config

    with GGUFFile(model_path) as gguf:
        cfg = read_config(gguf)
        dense = sum(t.n_elements for name, t in gguf.tensors.items() if "_exps." not in name)
        cuda_format = choose_dense_format("auto", "cuda", gguf, cfg)
        cuda_bytes = dense_device_bytes(gguf, cfg, cuda_format, 2)
        q_bytes = quantized_expert_bytes(gguf, cfg)
        slot = slot_nbytes(gguf, cfg)
    return _ModelSizes(dense, cuda_bytes, cuda_format, q_bytes, cfg.n_layer, cfg.n_expert, cfg.n_expert_used, cfg.n_embd,
                       cfg.n_ff_expert, cfg.n_head, cfg.n_vocab, cfg.n_ctx_train,
                       2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * 2, slot)


def synthetic_routing(n_tokens: int, n_layers: int, n_experts: int, k: int, seed: int = 0) -> np.ndarray:
    """Uniform random top-k routing [tokens, layers, k], distinct experts per (token, layer)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n_tokens, n_layers, n_experts)), axis=2)[:, :, :k].astype(np.int64)


def make_plan(model_path: str | Path, hw: HardwareInfo, profile: HardwareProfile,
              measurements: MachineMeasurements | None = None, routing: np.ndarray | None = None,
              overrides: PlanOverrides = PlanOverrides()) -> Plan:
    """Plan a run of `model_path` on `hw` (see the module docstring). Loads no weights."""
    from edge_moe.stream_rule import stream_slots_for, stream_threshold, stream_vram_bytes
    o, d = overrides, profile.defaults
    m = _model_sizes(model_path)
    notes: list[str] = []

    threads = o.threads or resolve_threads(profile, hw)
    notes.append(f"threads {threads}: " + ("your flag" if o.threads else f"profile {profile.name}"))
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        # H100 box, Qwen3 30B shape, 6 GiB budget (session 8): a layer's ggml call 0.71-0.78 ms instead of 0.42-0.45
        notes.append("warning: OMP_WAIT_POLICY=PASSIVE puts ggml's OpenMP threads to sleep after every layer's "
                     "CPU experts; measured 1.6x slower per call (decode 23 vs 29 tok/s): unset it")

    # figures: measured, else the profile's expected ones
    src = "measured" if measurements else f"profile {profile.name}"
    dram = measurements.dram_gbps_for(m.n_embd, m.n_ff, m.k) if measurements else profile.expected.dram_read_gbps
    source = measurements.dram_source_for(m.n_embd, m.n_ff, m.k) if measurements else "profile"
    if measurements and source == "run":
        bench = measurements.expert_dram_gbps.get(expert_shape_key(m.n_embd, m.n_ff, m.k))
        notes.append(f"DRAM figure from an earlier run's decode steps at this model's {m.n_embd} x {m.n_ff} "
                     f"experts, top-{m.k}" + ("" if bench is None else f" (micro-benchmark: {bench:g} GB/s)"))
    elif measurements and source == "shape":
        notes.append(f"DRAM measured at this model's {m.n_embd} x {m.n_ff} experts, top-{m.k} "
                     f"({measurements.dram_gbps:g} GB/s at the default shape)")
    pcie = (measurements.pcie_h2d_gbps if measurements else None) or profile.expected.pcie_h2d_gbps
    gpu_bw = (measurements.gpu_gemv_gbps if measurements else None) or profile.expected.gpu_bandwidth_gbps
    if measurements and measurements.threads != threads:
        notes.append(f"DRAM figure measured with {measurements.threads} threads, plan uses {threads}")
    notes.append(f"figures from {src}: DRAM {dram:g} GB/s, PCIe {pcie or '?'} GB/s, GPU {gpu_bw or '?'} GB/s")

    gpu = hw.primary_gpu
    ctx = o.n_ctx or d.context_length
    if o.n_ctx is None and ctx > m.n_ctx_train:
        ctx = m.n_ctx_train
        notes.append(f"context capped at the training context {m.n_ctx_train}")
    elif o.n_ctx is not None:
        notes.append(f"context {ctx}: your flag" + (f" (beyond the training context {m.n_ctx_train})"
                                                      if ctx > m.n_ctx_train else ""))

    margin = int(d.vram_margin_gib * GIB)
    free = None if gpu is None else (gpu.free_vram_bytes or gpu.total_vram_bytes)
    device = "cuda" if gpu is not None and free is not None else "cpu"
    if o.device is not None:
        device = o.device
        notes.append(f"device {device}: your flag")
    elif device == "cpu":
        notes.append("device cpu: no GPU with known VRAM" if gpu is not None else "device cpu: no NVIDIA GPU")

    elem = 2 if device == "cuda" else 4  # the executor's dtype: fp16 on CUDA, fp32 on the CPU
    # what the executor's dense_format "auto" allocates: GGUF blocks on CUDA where kernels read them
    dense = m.dense_cuda_bytes if device == "cuda" else m.n_params_dense * elem
    stream_ring = stream_vram_bytes(m.slot_bytes, m.n_embd, m.n_ff)  # prefill streaming's slots + scratch
    # + the last token's logits (generation asks for no others) + the stream ring on CUDA
    fixed = dense + m.n_vocab * (4 + elem) + (stream_ring if device == "cuda" else 0)
    per_ctx = m.kv_bytes_per_token + d.prefill_chunk * m.n_head * 2  # KV + a chunk's attention scores

    avail = None if free is None else free - margin
    if o.vram_budget_gib is not None and free is not None:
        cap = int(o.vram_budget_gib * GIB) - RUNTIME_RESERVE_BYTES
        notes.append(f"VRAM budget {o.vram_budget_gib:g} GiB in all: your flag "
                     f"({RUNTIME_RESERVE_BYTES / GIB:.2f} GiB of it set aside for the CUDA "
                     "context and the allocator's slack)" + (f"; capped by free VRAM minus the margin, "
                                                               f"{avail / GIB:.2f} GiB" if avail < cap else ""))
        avail = min(avail, cap)
    if device == "cuda" and avail is not None and o.n_ctx is None and fixed + per_ctx * ctx > avail:
        fit = (avail - fixed) // per_ctx // CTX_STEP * CTX_STEP
        if fit >= min(MIN_CTX, ctx):
            notes.append(f"context reduced from {ctx} to {fit}: VRAM holds no more KV beside the dense weights")
            ctx = int(fit)
        elif o.device is None:
            device, elem = "cpu", 4
            dense = m.n_params_dense * elem
            fixed = dense + m.n_vocab * (4 + elem)
            notes.append(f"device cpu: dense weights ({m.dense_cuda_bytes / GIB:.2f} GiB {m.dense_cuda_format}) and a "
                         f"{min(MIN_CTX, ctx)}-token KV cache do not fit in {avail / GIB:.2f} GiB of VRAM")
    kv = m.kv_bytes_per_token * ctx * elem // 2
    workspace = fixed - dense + d.prefill_chunk * m.n_head * 2 * ctx

    # expert slots: what VRAM leaves, unless the user sets the budget
    slot = m.slot_bytes
    budget = 0
    if device == "cuda":
        left = 0 if avail is None else avail - dense - kv - workspace
        if o.gpu_budget_gib is not None:
            budget = int(o.gpu_budget_gib * GIB)
            notes.append(f"expert budget {o.gpu_budget_gib:g} GiB: your flag"
                         + (f" (more than the {max(left, 0) / GIB:.2f} GiB free VRAM allows)" if budget > left else ""))
        else:
            budget = max(left, 0)
        if left < 0 and (o.n_ctx is not None or o.device == "cuda"):
            what = "the VRAM budget" if o.vram_budget_gib is not None else "free VRAM minus the margin"
            notes.append(f"warning: context {ctx} with the dense weights exceeds {what}")

    dense_s = dense / ((gpu_bw or FALLBACK_GPU_GBPS) * 1e9 if device == "cuda" else dram * 1e9)
    call_s = cpu_call_seconds(measurements)
    notes.append(f"ggml call {call_s * 1e6:.0f} us fixed: "
                 + ("measured" if measurements and measurements.cpu_call_us else "cost_model's H100 figure"))
    # the CPU device: no graphs, no cache (cost_model.CPU_DEVICE_LAYER_S is a first estimate)
    cpu_token_s = dense_s + m.n_layer * (CPU_DEVICE_LAYER_S + call_s + m.k * m.expert_bytes / (dram * 1e9))
    no_cache_tps = 1.0 / cpu_token_s
    replace = parse_replace_policy(o.policy) if o.policy else ReplacePolicy.LRU
    cache: CacheConfig | None = None
    hit_rate: float | None = None
    decode_tps = no_cache_tps
    routing_source = "none"
    figures: MachineFigures | None = None
    if device == "cuda":
        placements = candidate_placements(budget, slot, m.n_layer, m.n_expert, notes, pinned_layers=o.pinned_layers,
                                          n_sets=o.n_sets, n_ways=o.n_ways)
        # every expert cached (one set per layer holding all, or every layer pinned)
        full = len(placements) == 1 and placements[0] in ((0, m.n_layer, m.n_expert), (m.n_layer, 0, 0))
        figures = _figures(m, dense, dram, pcie or FALLBACK_PCIE_GBPS, gpu_bw or FALLBACK_GPU_GBPS, call_s, full,
                           stream_slots_for(slot) // 2)
        if placements:
            trace, routing_source = _routing(routing, m)
            rules = [o.admission] if o.admission else ["all", "reuse"]
            results = []
            for pinned, sets, ways in placements:
                for rule in rules if sets else rules[:1]:  # no sets: nothing to admit
                    adm = admission_config(rule, o.quota, figures, m.expert_bytes)
                    cfg_ = CacheConfig(sets, ways, replace, adm, pinned_layers=pinned)
                    results.append((simulate(trace, cfg_, m.expert_bytes, m.n_expert, figures), cfg_))
            best, best_cfg = max(results, key=lambda r: r[0].tokens_per_second)
            no_cache_tps = best.baseline_tokens_per_second
            summary = ", ".join(f"{placement_text(c)} {r.admission} {r.tokens_per_second:.2f}" for r, c in results)
            if best.tokens_per_second > no_cache_tps or o.forces_cache or o.admission or full:
                cache, hit_rate, decode_tps = best_cfg, best.hit_rate, best.tokens_per_second
                notes.append(f"{placement_text(best_cfg)}, admission {best.admission}: simulated tok/s {summary} "
                             f"on {routing_source}" + (" (your flag)" if o.admission else ""))
                if full:  # once warm (a prompt's prefill fills it), a token is one CUDA graph
                    decode_tps = 1.0 / figures.resident_token_seconds
                    notes.append(f"every expert cached: {decode_tps:.2f} tok/s in steady state, one CUDA graph "
                                 f"per token (the simulated tok/s include the cache's warm-up)")
            else:
                decode_tps = no_cache_tps
                notes.append(f"no cache: simulated tok/s {summary} do not beat {no_cache_tps:.2f} without it")
        else:
            no_cache_tps = decode_tps = 1.0 / figures.no_cache_seconds(m.n_layer, m.k, m.expert_bytes)
    if o.quota is not None:
        notes.append(f"quota {o.quota} fills/token: your flag")
    if o.policy:
        notes.append(f"replacement {replace.value}: your flag")

    decode_stream = None
    if cache is not None and figures is not None:
        decode_stream = figures.decode_stream_rule(m.k, m.expert_bytes, served=cache.n_sets > 0)
        if decode_stream is not None:
            notes.append(f"decode streaming: of m misses of a host layer, {list(decode_stream)}[m] go to the GPU's "
                         f"stream ring while the CPU computes the others")
    cached_per_layer = 0 if cache is None else cache.total_slots(m.n_expert) // m.n_layer
    prefill = prefill_tps(d.prefill_chunk, n_layer=m.n_layer, n_expert=m.n_expert, k=m.k,
                          expert_bytes=m.expert_bytes, n_embd=m.n_embd, n_ff=m.n_ff,
                          cached_per_layer=cached_per_layer, dense_s=dense_s, dram_gbps=dram,
                          gpu_gbps=gpu_bw if device == "cuda" else None,
                          layer_s=(LAYER_SECONDS if device == "cuda" else CPU_DEVICE_LAYER_S) + call_s)
    notes.append(f"prefill {prefill:.0f} tok/s: first estimate, bandwidth only (compute ignored)")
    if device == "cuda" and pcie:
        stream = d.prefill_chunk / (dense_s + m.n_layer * m.n_expert * m.expert_bytes / (pcie * 1e9))
        notes.append(f"streaming all experts over PCIe per chunk: ~{stream:.0f} tok/s (missed experts used by "
                     f">= {stream_threshold(m.expert_bytes, m.n_embd, m.n_ff)} tokens of a chunk are streamed)")
        prefill = max(prefill, stream)
    return Plan(model=str(model_path), device=device, threads=threads, n_ctx=int(ctx), cache=cache,
                expert_budget_bytes=0 if cache is None else cache.total_slots(m.n_expert) * slot, slot_bytes=slot,
                expert_bytes=m.expert_bytes, dense_bytes=dense, kv_bytes=kv, workspace_bytes=workspace,
                vram_free_bytes=free, margin_bytes=margin, dram_gbps=dram, pcie_gbps=pcie, gpu_gbps=gpu_bw,
                figures_source=src, hit_rate=hit_rate, routing_source=routing_source,
                predicted_decode_tps=decode_tps, predicted_prefill_tps=prefill,
                no_cache_decode_tps=no_cache_tps, notes=notes, cpu_call_seconds=call_s,
                vram_budget_bytes=None if o.vram_budget_gib is None else int(o.vram_budget_gib * GIB),
                dense_format=m.dense_cuda_format if device == "cuda" else "fp16", prefill_chunk=d.prefill_chunk,
                decode_stream=decode_stream)


def _figures(m: _ModelSizes, dense: int, dram: float, pcie: float, gpu_bw: float, call_s: float,
             full: bool, stream_max: int = 0) -> MachineFigures:
    """cost_model's figures for this model on CUDA. The LM head (n_vocab x n_embd at the dense
    weights' mean bytes per weight) is read outside the layers; the other dense bytes, less the
    embedding, spread over the layers (a lower bound of each layer's front graph)."""
    from edge_moe.stream_rule import zero_copy_enabled

    head = m.n_vocab * m.n_embd * dense / max(m.n_params_dense, 1)
    per_layer = max(dense - 2 * head, 0.0) / m.n_layer
    return decode_figures(n_layer=m.n_layer, k=m.k, slot_bytes=m.slot_bytes, layer_dense_bytes=per_layer,
                          outside_dense_bytes=head, dram_gbps=dram, pcie_gbps=pcie, gpu_gemv_gbps=gpu_bw,
                          cpu_call_seconds=call_s, all_cached=full, decode_stream_max=stream_max,
                          zero_copy=zero_copy_enabled())


def _routing(routing: np.ndarray | None, m: _ModelSizes) -> tuple[np.ndarray, str]:
    if routing is None:
        return (synthetic_routing(SYNTHETIC_TOKENS, m.n_layer, m.n_expert, m.k),
                f"uniform random routing ({SYNTHETIC_TOKENS} tokens, seed 0)")
    r = np.asarray(routing)
    if r.ndim != 3 or r.shape[1:] != (m.n_layer, m.k):
        raise ValueError(f"routing must be [tokens, {m.n_layer}, {m.k}] for this model, got {list(r.shape)}")
    return r, f"routing trace ({r.shape[0]} tokens)"


def measure_for_model(model_path: str | Path, threads: int, hw: HardwareInfo,
                      refresh: bool = False) -> MachineMeasurements:
    """This machine's cached figures (measured where absent, stale or `refresh`), with the DRAM
    figure at the model's expert shape (microbench.with_expert_dram)."""
    from edge_moe.gguf_file import GGUFFile
    from edge_moe.microbench import load_or_measure, with_expert_dram
    from edge_moe.model_config import read_config

    with GGUFFile(model_path) as gguf:  # the expert shape only (make_plan reads the sizes it needs)
        cfg = read_config(gguf)
    return with_expert_dram(load_or_measure(threads, hw=hw, refresh=refresh), cfg.n_embd, cfg.n_ff_expert,
                            cfg.n_expert_used, hw)


def plan_for_machine(model_path: str | Path, overrides: PlanOverrides | None = None,
                     figures: str = "measure", routing: np.ndarray | None = None) -> Plan:
    """Plan for the machine we run on: detect it, match a profile, and take its figures from
    the micro-benchmarks ("measure": cached, measured once if absent; "cached": only if
    already cached, else the profile's; "profile": the profile's)."""
    from edge_moe.hardware import detect_hardware
    from edge_moe.microbench import load_cached
    from edge_moe.profiles import select_profile

    if figures not in ("measure", "cached", "profile"):
        raise ValueError(f"figures must be measure, cached or profile, got {figures!r}")
    overrides = overrides or PlanOverrides()
    hw = detect_hardware()
    profile = select_profile(hw).profile
    threads = overrides.threads or resolve_threads(profile, hw)
    measured = None
    if figures == "measure":
        measured = measure_for_model(model_path, threads, hw)
    elif figures == "cached":
        measured = load_cached(threads, hw)
    return make_plan(model_path, hw, profile, measured, routing=routing, overrides=overrides)
