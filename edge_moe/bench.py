"""`edge-moe bench`: measure edge-moe on one GGUF the way llama-bench measures llama.cpp.

One bench = one model, one routing mode, one VRAM budget:

1. plan as `edge-moe run` would (`plan_for_machine`, zero tuning): with `vram_budget_gib` the
   planner keeps dense weights, KV cache, workspace, expert slots and the CUDA context within
   it; with `gpu_budget_gib` the planner sizes the cache from that expert-slot budget. On a
   CPU device (tests) the planner plans no cache; `gpu_budget_gib` then builds one (LRU,
   admit-all unless `admission` says otherwise), with slots in host memory.
2. load the model, warm up as llama-bench does: the whole prompt and a few tokens (Triton
   compiles the prompt's shapes, cuBLAS picks its kernels, the decode graphs of the measured
   KV length are captured, the cache sees the workload). In session 5 this made the reuse
   admission fill ~48 experts per Qwen3 token at 12 GiB instead of ~7: its validation mean
   never forgot the prefill's verdict; it is recency-weighted since (cache_admission.py).
   With prefill graphs (CUDA), twice: an all-GPU model's prompt runs eagerly while the cache
   fills, and its prefill graph is captured the first time every expert is cached (the
   capture's one-time cost, ~one eager prefill, is measured apart: README's results).
3. `repeats` runs of: reset the context, prefill a `prompt_tokens` prompt of random token ids
   (time to first token = prefill + the first greedy pick), then exactly `gen_tokens` decode
   steps (no EOS stop), each fed a random token as llama-bench's tg test does.
   The expert cache keeps its contents from run to run, as in a long-running process.
4. `profile_tokens` more decode steps with the per-layer profiler (edge_moe/layer_profile.py).

Routing: "natural" (the model's router; random weights route almost uniformly) or "replay"
(expert ids forced from a trace, `edge_moe.trace.ReplayRouting`; wraps around if shorter).
Per-token bytes follow the cache's counters (DESIGN.md's cost model): DRAM bytes = (CPU
misses + fills) x expert bytes, PCIe bytes = (fills + decode-streamed misses) x expert bytes, counted over decode steps.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_moe.bench_stats import cpu_in_situ, mean_std, record_run_figure


ROUTING_MODES = ("natural", "replay")
WARMUP_TOKENS = 4  # decode steps after the warm-up's whole prompt


@dataclass(frozen=True)
class BenchConfig:
    model: Path
    routing: str = "natural"  # natural | replay
    trace: Path | None = None  # replay: an .npz (shared/traces format) or an edge-moe JSON trace
    trace_problem: str = "0"
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repeats: int = 3
    threads: int | None = None
    vram_budget_gib: float | None = None  # everything on the GPU (planner sizes the cache)
    gpu_budget_gib: float | None = None  # expert slots only
    admission: str | None = None  # all | reuse; None: the planner's choice (or all with gpu_budget)
    device: str = "auto"  # auto | cpu | cuda
    profile_tokens: int = 1
    warmup: bool = True
    record_figures: bool = True  # keep the decode steps' DRAM figure for later plans on this machine (CUDA runs)
    max_seconds: float | None = None  # stop decoding past this (after loading); the result says so
    seed: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        if not self.model.is_file():
            raise ValueError(f"{self.model}: no such model file")
        if self.routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {', '.join(ROUTING_MODES)}, got {self.routing!r}")
        if self.routing == "replay":
            if self.trace is None:
                raise ValueError("routing replay needs a trace file (--trace)")
            object.__setattr__(self, "trace", Path(self.trace))
            if not self.trace.is_file():
                raise ValueError(f"{self.trace}: no such trace file")
        elif self.trace is not None:
            raise ValueError("a trace is only used with routing replay")
        for name in ("prompt_tokens", "gen_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.profile_tokens < 0:
            raise ValueError(f"profile_tokens must be >= 0, got {self.profile_tokens}")
        for name in ("vram_budget_gib", "gpu_budget_gib", "max_seconds"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if self.vram_budget_gib is not None and self.gpu_budget_gib is not None:
            raise ValueError("give either --vram-budget (everything on the GPU) or --gpu-budget (expert slots)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def n_ctx(self) -> int:
        return self.prompt_tokens + self.gen_tokens + self.profile_tokens + 1


@dataclass(frozen=True)
class RunResult:
    prompt_tokens: int
    prefill_seconds: float  # the prompt's forward
    ttft_seconds: float  # prefill + the first token's greedy pick
    decode_tokens: int  # decode steps done (gen_tokens unless max_seconds cut it short)
    decode_seconds: float
    prefill_counts: tuple[int, int, int]  # cache (hits, misses, fills) during the prefill
    decode_counts: tuple[int, int, int]  # cache (hits, misses, fills) over the decode steps
    decode_cpu_seconds: float = 0.0  # the executor's cpu_experts phase over the decode steps
    decode_cpu_calls: int = 0  # layer steps that ran the CPU expert path
    decode_cpu_misses: tuple[int, ...] = ()  # experts computed on the CPU, per layer, over the decode steps
    decode_streamed: int = 0  # misses copied to the GPU's stream ring and computed there, over the decode steps

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


# ---- memory ---------------------------------------------------------------------------------


def host_memory() -> dict[str, int]:
    """Peak RSS (getrusage) and the current anonymous / file-backed split (/proc/self/status):
    file-backed pages are the GGUF's memory map, which the CPU misses read in place."""
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[f"{key}_bytes"] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def nvml_used_bytes(pid: int | None = None) -> dict[str, int | None]:
    """NVML: memory used on all GPUs, and by process `pid` (None when NVML cannot tell, e.g. in a
    PID namespace). Empty without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: nothing to report
        return {}
    try:
        device_used, proc = 0, None
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            device_used += pynvml.nvmlDeviceGetMemoryInfo(h).used
            if pid is not None:
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                    if p.pid == pid and p.usedGpuMemory is not None:
                        proc = (proc or 0) + int(p.usedGpuMemory)
        return {"device_used_bytes": int(device_used), "process_bytes": proc}
    finally:
        pynvml.nvmlShutdown()


def gpu_memory(device: torch.device, nvml_before: dict[str, int | None]) -> dict[str, Any]:
    if device.type != "cuda":
        return {}
    import os

    now = nvml_used_bytes(os.getpid())
    out: dict[str, Any] = {"torch_max_reserved_bytes": torch.cuda.max_memory_reserved(device),
                           "torch_max_allocated_bytes": torch.cuda.max_memory_allocated(device),
                           "nvml_process_bytes": now.get("process_bytes")}
    before = nvml_before.get("device_used_bytes")
    if before is not None and now.get("device_used_bytes") is not None:
        out["nvml_device_delta_bytes"] = int(now["device_used_bytes"]) - int(before)
    seen = [v for v in (out["nvml_process_bytes"], out.get("nvml_device_delta_bytes")) if v is not None]
    out["peak_vram_bytes"] = max(seen + [out["torch_max_reserved_bytes"]])
    out["context_overhead_bytes"] = out["peak_vram_bytes"] - out["torch_max_reserved_bytes"]
    return out


# ---- the bench ------------------------------------------------------------------------------


def _plan(cfg: BenchConfig, routing: np.ndarray | None) -> tuple[Any, Any]:
    """(plan used for the run, plan predicting on the replayed trace or None)."""
    from edge_moe.planner import PlanOverrides, plan_for_machine

    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    o = PlanOverrides(device="cuda" if cuda else "cpu", threads=cfg.threads, n_ctx=cfg.n_ctx,
                      vram_budget_gib=cfg.vram_budget_gib if cuda else None,
                      gpu_budget_gib=cfg.gpu_budget_gib if cuda else None, admission=cfg.admission)
    figures = "measure" if cuda else "profile"
    plan = plan_for_machine(cfg.model, o, figures)
    on_trace = None
    if routing is not None:  # the same cache, predicted on the trace (the run itself is planned without it)
        o2 = replace(o, admission=plan.admission) if plan.cache is not None else o
        on_trace = plan_for_machine(cfg.model, o2, figures if figures == "profile" else "cached", routing=routing)
    return plan, on_trace


def _cache(cfg: BenchConfig, plan: Any, device: torch.device) -> Any:
    """The executor's cache: the plan's, or (gpu_budget on a CPU device: tests) one from the budget."""
    from edge_moe.gpu_experts import GpuExpertsConfig

    if plan.cache is not None:
        return plan.gpu_experts_config()
    if cfg.gpu_budget_gib is None or device.type == "cuda":
        return None
    from edge_moe.cache_admission import AdmissionConfig, CostModel
    from edge_moe.expert_cache import CacheConfig
    from edge_moe.gpu_experts import slot_nbytes
    from edge_moe.model_config import read_config
    from edge_moe.gguf_file import GGUFFile

    with GGUFFile(cfg.model) as g:
        mcfg = read_config(g)
        slot = slot_nbytes(g, mcfg)
    rule = cfg.admission or "all"
    cost = CostModel(plan.expert_bytes, plan.dram_gbps * 1e9, 25e9, 1e-6) if rule == "reuse" else None
    cache = CacheConfig.from_budget(int(cfg.gpu_budget_gib * 2**30), slot, mcfg.n_layer,
                                    mcfg.n_expert, admission=AdmissionConfig(rule=rule, cost=cost))
    return GpuExpertsConfig(cache)


def _counts(model: Any) -> tuple[int, int, int]:
    c = model.gpu.cache
    return (0, 0, 0) if c is None else (c.stats.hits, c.stats.misses, c.stats.fills)


def _step(model: Any, tokens: list[int], replay: Any) -> int:
    forced = None if replay is None else replay.for_positions(model.n_past, len(tokens))
    return int(torch.argmax(model.forward(tokens, force_ids=forced, last_only=True)[-1]))  # greedy; the .item() syncs


def _one_run(model: Any, prompt: list[int], feed: list[int], replay: Any, deadline: float | None) -> RunResult:
    """Prefill `prompt`, then one decode step per token of `feed`. The greedy pick is computed
    (its cost is part of a step) but the next input is `feed`'s token, as llama-bench feeds
    random tokens: a random-weight model's own picks repeat and would make routing repeat."""
    model.reset(0)
    before = _counts(model)
    t0 = time.perf_counter()
    forced = None if replay is None else replay.for_positions(0, len(prompt))
    logits = model.forward(prompt, force_ids=forced, last_only=True)
    if logits.is_cuda:
        torch.cuda.synchronize(logits.device)
    t1 = time.perf_counter()
    int(torch.argmax(logits[-1]))  # the first greedy pick (int() waits for it: part of the TTFT)
    t2 = time.perf_counter()
    mid = _counts(model)
    cpu0 = model.decode_cpu.copy()
    streamed0 = model.gpu.n_streamed_decode
    n, decode_s = 0, 0.0
    for fed in feed:
        if deadline is not None and time.perf_counter() > deadline:
            break
        ts = time.perf_counter()
        _step(model, [fed], replay)  # the greedy pick is made (a step ends in it), the token fed is the random one
        decode_s += time.perf_counter() - ts
        n += 1
    after = _counts(model)
    cpu = model.decode_cpu.since(cpu0)
    return RunResult(len(prompt), t1 - t0, t2 - t0, n, decode_s, _diff(before, mid), _diff(mid, after),
                     cpu.seconds, cpu.calls, tuple(cpu.misses), model.gpu.n_streamed_decode - streamed0)


def _diff(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return b[0] - a[0], b[1] - a[1], b[2] - a[2]


def run_bench(cfg: BenchConfig, log: Any = None) -> dict[str, Any]:
    """Run the bench (module docstring); returns a JSON-serializable dict."""
    from edge_moe.executor import ExecutorConfig, HybridModel
    from edge_moe.layer_profile import LayerProfiler
    from edge_moe.trace import ReplayRouting

    say = log or (lambda msg: None)
    nvml_before = nvml_used_bytes()
    replay = None
    if cfg.routing == "replay":
        assert cfg.trace is not None
        replay = ReplayRouting.load(cfg.trace, cfg.trace_problem)
    plan, on_trace = _plan(cfg, None if replay is None else replay.experts)
    device = torch.device(plan.device)
    warnings = []
    if cfg.vram_budget_gib is not None and device.type != "cuda":
        warnings.append("no CUDA device: the VRAM budget is ignored, everything runs on the CPU")
        say(warnings[-1])
    cache = _cache(cfg, plan, device)
    say(f"plan: device {plan.device}, threads {plan.threads}, cache "
        + ("none" if cache is None else f"{cache.cache.n_sets} sets x {cache.cache.n_ways} ways, "
                                        f"last {cache.cache.pinned_layers} layers pinned, "
                                        f"admission {cache.cache.admission.rule.value}"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_load = time.perf_counter()
    model = HybridModel(cfg.model, ExecutorConfig(device=plan.device, n_ctx=cfg.n_ctx, n_threads=plan.threads,
                                                  cache=cache, prefill_chunk=plan.prefill_chunk))
    load_s = time.perf_counter() - t_load
    say(f"loaded in {load_s:.1f} s")
    try:
        if replay is not None:
            replay.check_model(model.cfg.n_layer, model.cfg.n_expert, model.cfg.n_expert_used)
        rng = np.random.default_rng(cfg.seed)
        prompt = rng.integers(0, model.cfg.n_vocab, cfg.prompt_tokens).tolist()
        feed = rng.integers(0, model.cfg.n_vocab, cfg.gen_tokens + cfg.profile_tokens).tolist()
        deadline = None if cfg.max_seconds is None else time.perf_counter() + cfg.max_seconds
        if cfg.warmup:
            _one_run(model, prompt, feed[:WARMUP_TOKENS], replay, deadline)
            if model.prefill_graphs is not None:  # the first prompt filled the cache: this one captures
                _one_run(model, prompt, feed[:WARMUP_TOKENS], replay, deadline)  # its prefill graph
            say("warmed up")
        runs: list[RunResult] = []
        for i in range(cfg.repeats):
            if runs and deadline is not None and time.perf_counter() > deadline:
                break
            runs.append(_one_run(model, prompt, feed[:cfg.gen_tokens], replay, deadline))
            r = runs[-1]
            say(f"run {i + 1}: prefill {r.prefill_tps:.1f} tok/s, decode {r.decode_tps:.2f} tok/s "
                f"({r.decode_tokens} tokens)")
        breakdown = _profile(model, feed[cfg.gen_tokens:], replay, LayerProfiler)
        prefill_breakdown = _profile_prefill(model, prompt, replay, LayerProfiler) if cfg.profile_tokens else None
        out = _result(cfg, plan, on_trace, model, runs, load_s, breakdown,
                      gpu_memory(device, nvml_before), host_memory())
        out["prefill_breakdown"] = prefill_breakdown
        out["warnings"] = warnings
        figure = (out["cpu_in_situ"] or {}).get("dram_gbps")
        keep = cfg.record_figures and device.type == "cuda" and figure is not None
        out["recorded_dram_gbps"] = record_run_figure(model, plan.threads, figure) if keep else None
        return out
    finally:
        model.close()


def _profile(model: Any, feed: list[int], replay: Any, profiler_cls: Any) -> dict[str, Any] | None:
    """Decode steps after the last run, profiled per layer (the context continues the run's)."""
    if not feed:
        return None
    model.profiler = profiler_cls(model.device, model.cfg.n_layer)
    t0 = time.perf_counter()
    for fed in feed:
        _step(model, [fed], replay)
    token_ms = (time.perf_counter() - t0) * 1e3 / len(feed)
    d: dict[str, Any] = model.profiler.to_dict()
    model.profiler = None
    d["token_ms"] = round(token_ms, 4)  # whole step: layers + embedding, LM head, greedy pick
    d["outside_layers_ms"] = round(token_ms - d["layers_ms"], 4)
    return d


def _profile_prefill(model: Any, prompt: list[int], replay: Any, profiler_cls: Any) -> dict[str, Any]:
    """One more prefill of the prompt from an empty context, profiled per layer (summed over
    its prefill_chunk steps: `tokens` in the result counts the steps)."""
    model.reset(0)
    model.profiler = profiler_cls(model.device, model.cfg.n_layer)
    t0 = time.perf_counter()
    forced = None if replay is None else replay.for_positions(0, len(prompt))
    model.forward(prompt, force_ids=forced, last_only=True)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    wall_ms = (time.perf_counter() - t0) * 1e3
    d: dict[str, Any] = model.profiler.to_dict()
    model.profiler = None
    steps = max(d["tokens"], 1)  # per_layer_ms are per step: report the whole prefill
    d["per_layer_ms"] = {p: [round(v * steps, 4) for v in vals] for p, vals in d["per_layer_ms"].items()}
    d["total_ms"] = {p: round(v * steps, 4) for p, v in d["total_ms"].items()}
    d["layers_ms"] = round(d["layers_ms"] * steps, 4)
    d["token_ms"] = round(wall_ms, 4)  # (the whole prefill; named as in the decode breakdown)
    d["outside_layers_ms"] = round(wall_ms - d["layers_ms"], 4)
    d["prompt_tokens"] = len(prompt)
    return d


def _result(cfg: BenchConfig, plan: Any, on_trace: Any, model: Any, runs: list[RunResult], load_s: float,
            breakdown: dict[str, Any] | None, gpu: dict[str, Any], host: dict[str, int]) -> dict[str, Any]:
    mcfg = model.cfg
    expert_bytes = plan.expert_bytes
    per_token: dict[str, list[float]] = {"hit_rate": [], "pcie_bytes_per_token": [], "dram_bytes_per_token": [],
                                         "fills_per_token": []}
    for r in runs:
        hits, misses, fills = r.decode_counts
        if model.gpu.cache is None:  # no cache: every routed expert is a CPU miss
            hits, misses, fills = 0, r.decode_tokens * mcfg.n_layer * mcfg.n_expert_used, 0
        n = max(r.decode_tokens, 1)
        per_token["hit_rate"].append(hits / (hits + misses) if hits + misses else 0.0)
        per_token["pcie_bytes_per_token"].append((fills + r.decode_streamed) * expert_bytes / n)
        per_token["dram_bytes_per_token"].append((misses + fills) * expert_bytes / n)
        per_token["fills_per_token"].append(fills / n)
    complete = len(runs) == cfg.repeats and all(r.decode_tokens == cfg.gen_tokens for r in runs)
    predicted = plan.predicted_decode_tps if on_trace is None else on_trace.predicted_decode_tps
    served = [model.gpu.serves(il) for il in range(mcfg.n_layer)]
    cache = model.gpu.cache
    d = asdict(cfg)
    d["model"], d["trace"] = str(cfg.model), None if cfg.trace is None else str(cfg.trace)
    return {
        "engine": "edge-moe", "config": d, "complete": complete,
        "model": {"arch": mcfg.arch, "n_layer": mcfg.n_layer, "n_expert": mcfg.n_expert, "k": mcfg.n_expert_used,
                  "expert_bytes": expert_bytes, "file_bytes": cfg.model.stat().st_size},
        "device": str(model.device), "threads": plan.threads, "load_seconds": load_s,
        "cache": None if cache is None else {"n_sets": cache.n_sets, "n_ways": cache.n_ways,
                                             "pinned_layers": cache.config.pinned_layers,
                                             "policy": cache.config.replace.value,
                                             "admission": cache.config.admission.rule.value,
                                             "slots": cache.n_slots},
        "plan": {"predicted_decode_tps": plan.predicted_decode_tps, "predicted_prefill_tps": plan.predicted_prefill_tps,
                 "predicted_hit_rate": plan.hit_rate, "routing_source": plan.routing_source,
                 "predicted_decode_tps_on_trace": None if on_trace is None else on_trace.predicted_decode_tps,
                 "predicted_hit_rate_on_trace": None if on_trace is None else on_trace.hit_rate,
                 "planned_vram_bytes": plan.planned_vram_bytes, "vram_budget_bytes": plan.vram_budget_bytes,
                 "notes": list(plan.notes)},
        "runs": [{"prefill_seconds": r.prefill_seconds, "ttft_seconds": r.ttft_seconds,
                  "prefill_tps": r.prefill_tps, "decode_tokens": r.decode_tokens, "decode_seconds": r.decode_seconds,
                  "decode_tps": r.decode_tps, "prefill_hits_misses_fills": list(r.prefill_counts),
                  "decode_hits_misses_fills": list(r.decode_counts), "decode_streamed": r.decode_streamed,
                  "decode_cpu_seconds": r.decode_cpu_seconds,
                  "decode_cpu_calls": r.decode_cpu_calls} for r in runs],
        "cpu_in_situ": cpu_in_situ(runs, plan, predicted, served),
        "summary": {"decode_tps": mean_std([r.decode_tps for r in runs]),
                    "prefill_tps": mean_std([r.prefill_tps for r in runs]),
                    "ttft_seconds": mean_std([r.ttft_seconds for r in runs]),
                    **{k: mean_std(v) for k, v in per_token.items()}},
        "memory": {"gpu": gpu, "host": host},
        "breakdown": breakdown,
    }
