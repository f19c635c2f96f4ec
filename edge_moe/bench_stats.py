"""Statistics of `edge-moe bench` runs: mean and stddev, and the CPU expert path as the decode
steps saw it against what the plan assumed.

The executor times its CPU-expert phase and counts its calls (`StepTimings.cpu_experts`,
`cpu_calls`); the cache counts misses per layer. From those, for the decode steps of each run:
the rate the CPU reached (`cpu_in_situ`), the rate the planner's figures give the same calls and
bytes, the prediction with the measured CPU time in place of the planned one, and the DRAM figure
that would have predicted it (`run_dram_figure`), which a CUDA run keeps for later plans on the
machine (`record_run_figure`). Session 8 found the cost model right within 1-5% once its CPU
time is the run's own (benchmarks/results/2026-11-24_session8/README.md).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from edge_moe.cost_model import REPACK_DRAM_GAIN

if TYPE_CHECKING:
    from edge_moe.bench import RunResult


def mean_std(xs: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def cpu_misses(model: Any) -> tuple[int, ...]:
    """Experts computed on the CPU so far, per layer (without a cache: every routed expert)."""
    c, cfg = model.gpu.cache, model.cfg
    if c is None:  # every layer step is a call with all k experts
        return tuple(model.timings.cpu_calls * cfg.n_expert_used // cfg.n_layer for _ in range(cfg.n_layer))
    return tuple(c.stats.misses_by_layer)


def _repack_gain(plan: Any) -> float:
    """The DRAM gain the plan assumed on layers without cache slots (a CPU-device plan assumes none)."""
    return REPACK_DRAM_GAIN if plan.device == "cuda" else 1.0


def _cpu_bytes(r: RunResult, plan: Any, served: list[bool]) -> tuple[int, int]:
    """Expert bytes the CPU read in a run's decode steps: (on layers with cache slots, whose experts
    stay zero-copy; on the others, repacked)."""
    zero_copy = sum(m for m, s in zip(r.decode_cpu_misses, served) if s)
    repacked = sum(m for m, s in zip(r.decode_cpu_misses, served) if not s)
    return plan.expert_bytes * zero_copy, plan.expert_bytes * repacked


def cpu_in_situ(runs: list[RunResult], plan: Any, predicted_tps: float, served: list[bool]) -> dict[str, Any] | None:
    """The CPU expert path as the decode steps saw it, against what the plan assumed for the same work.

    gbps: the expert bytes the CPU read over the seconds of the cpu_experts phase (fixed costs of
    its ggml calls included). planned_gbps: the same bytes over the time the planner's cost model
    gives them (cpu_call_seconds per call; dram_gbps on layers with cache slots, whose experts stay
    zero-copy, x REPACK_DRAM_GAIN on the others on CUDA). predicted_decode_tps_at_in_situ: the prediction
    with that planned CPU time swapped for the measured one, so that its error over the measured
    decode is what the CPU figure does not explain (hit rate, GPU, host overheads)."""
    d, gain = plan.dram_gbps * 1e9, _repack_gain(plan)
    rates, planned, adjusted = [], [], []
    for r in runs:
        if r.decode_tokens == 0 or r.decode_cpu_seconds <= 0 or len(r.decode_cpu_misses) != len(served):
            continue
        zero_copy, repacked = _cpu_bytes(r, plan, served)
        if zero_copy + repacked == 0:
            continue
        t_plan = r.decode_cpu_calls * plan.cpu_call_seconds + zero_copy / d + repacked / (d * gain)
        rates.append((zero_copy + repacked) / r.decode_cpu_seconds / 1e9)
        planned.append((zero_copy + repacked) / t_plan / 1e9)
        adjusted.append(1.0 / (1.0 / predicted_tps + (r.decode_cpu_seconds - t_plan) / r.decode_tokens))
    if not rates:
        return None
    return {"gbps": mean_std(rates), "planned_gbps": mean_std(planned),
            "predicted_decode_tps_at_in_situ": mean_std(adjusted),
            "dram_gbps": run_dram_figure(runs, plan, served)}


# A run's DRAM figure is kept only from this much CPU work: a few calls measure the machine's mood
MIN_RUN_CPU_SECONDS = 0.5
MIN_RUN_CPU_CALLS = 100


def run_dram_figure(runs: list[RunResult], plan: Any, served: list[bool]) -> float | None:
    """The planner's DRAM figure (zero-copy GB/s, the cost model's terms) that explains the CPU
    time of these decode steps: d = (zero-copy bytes + repacked bytes / gain) / (seconds - calls x
    the plan's fixed call cost), over all runs. None with too little CPU work to say."""
    gain = _repack_gain(plan)
    seconds = calls = scaled_bytes = 0.0
    for r in runs:
        if len(r.decode_cpu_misses) != len(served):
            continue
        zero_copy, repacked = _cpu_bytes(r, plan, served)
        seconds += r.decode_cpu_seconds
        calls += r.decode_cpu_calls
        scaled_bytes += zero_copy + repacked / gain
    busy = seconds - calls * plan.cpu_call_seconds
    if seconds < MIN_RUN_CPU_SECONDS or calls < MIN_RUN_CPU_CALLS or busy < 0.5 * seconds or scaled_bytes <= 0:
        return None
    return scaled_bytes / busy / 1e9


def record_run_figure(model: Any, threads: int, gbps: float) -> float | None:
    """Keep the run's DRAM figure for the next plans on this machine (microbench.record_run_dram)."""
    from edge_moe.hardware import detect_hardware
    from edge_moe.microbench import record_run_dram

    c = model.cfg
    saved = record_run_dram(threads, detect_hardware(), c.n_embd, c.n_ff_expert, c.n_expert_used, gbps)
    return None if saved is None else gbps
