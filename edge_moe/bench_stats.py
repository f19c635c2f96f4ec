"""Statistics of `edge-moe bench` runs: mean and stddev, and the CPU expert path as the decode
steps saw it against what the plan assumed; and the DRAM figure any generation keeps.

The executor times its CPU-expert phase and counts its calls (`StepTimings.cpu_experts`,
`cpu_calls`) and, for its decode steps only, the same with the experts computed per layer
(`HybridModel.decode_cpu`). From those, for the decode steps of each run: the rate the CPU
reached (`cpu_in_situ`), the rate the planner's figures give the same calls and bytes, the
prediction with the measured CPU time in place of the planned one, and the DRAM figure that would
have predicted it (`run_dram_figure`, `decode_dram_figure`), which a CUDA run keeps for later plans
on the machine (`record_run_figure`; `keep_run_figure` for a model after `edge-moe run` or a chat
reply). Session 8 found the cost model right within 1-5% once its CPU time is the run's own
(benchmarks/results/2026-11-24_session8/README.md).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_moe.cost_model import REPACK_DRAM_GAIN

if TYPE_CHECKING:
    from edge_moe.bench import RunResult


def mean_std(xs: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _repack_gain(plan: Any) -> float:
    """The DRAM gain the plan assumed on layers without cache slots (a CPU-device plan assumes none)."""
    return REPACK_DRAM_GAIN if plan.device == "cuda" else 1.0


def _split_misses(misses: list[int] | tuple[int, ...], served: list[bool]) -> tuple[int, int]:
    """Experts the CPU computed: (on layers with cache slots, whose experts stay zero-copy; on the
    others, repacked)."""
    zero_copy = sum(m for m, s in zip(misses, served) if s)
    return zero_copy, sum(misses) - zero_copy


def _cpu_bytes(r: RunResult, plan: Any, served: list[bool]) -> tuple[int, int]:
    """Expert bytes the CPU read in a run's decode steps, split as `_split_misses`."""
    zero_copy, repacked = _split_misses(r.decode_cpu_misses, served)
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


@dataclass(frozen=True)
class FigurePolicy:
    """When a generation's decode steps give a DRAM figure, and where it is kept."""

    min_cpu_seconds: float = MIN_RUN_CPU_SECONDS
    min_cpu_calls: int = MIN_RUN_CPU_CALLS
    # devices of the dense part whose runs keep their figure: on a CPU device torch's dense work
    # shares the cores between the ggml calls, which would price CUDA plans (same key) too slow
    devices: tuple[str, ...] = ("cuda",)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_cpu_seconds) and self.min_cpu_seconds >= 0):
            raise ValueError(f"min_cpu_seconds must be >= 0, got {self.min_cpu_seconds}")
        if self.min_cpu_calls < 1:
            raise ValueError(f"min_cpu_calls must be >= 1, got {self.min_cpu_calls}")
        if not set(self.devices) <= {"cuda", "cpu"}:
            raise ValueError(f"devices must be among cuda and cpu, got {self.devices}")


# what `edge-moe run` and `edge-moe chat` use (keep_run_figure); bench keeps its own rule (CUDA runs)
RUN_FIGURE_POLICY = FigurePolicy()


@dataclass(frozen=True)
class FigureTerms:
    """The cost model's terms a DRAM figure is stated in, as the planner prices CPU misses: a call
    costs cpu_call_seconds + experts x expert_bytes / DRAM (x repack_gain on layers no slot serves)."""

    expert_bytes: int  # one expert as stored in the GGUF: what a CPU miss reads
    cpu_call_seconds: float  # the fixed cost of one ggml call
    repack_gain: float = 1.0

    def __post_init__(self) -> None:
        if self.expert_bytes < 1:
            raise ValueError(f"expert_bytes must be >= 1, got {self.expert_bytes}")
        if not (math.isfinite(self.cpu_call_seconds) and self.cpu_call_seconds >= 0):
            raise ValueError(f"cpu_call_seconds must be >= 0, got {self.cpu_call_seconds}")
        if not (math.isfinite(self.repack_gain) and self.repack_gain > 0):
            raise ValueError(f"repack_gain must be positive, got {self.repack_gain}")

    @classmethod
    def of_plan(cls, plan: Any) -> FigureTerms:
        return cls(plan.expert_bytes, plan.cpu_call_seconds, _repack_gain(plan))


def _short_of(seconds: float, calls: int, busy: float, scaled_bytes: float, policy: FigurePolicy) -> str | None:
    """Why this CPU work gives no figure, or None when it does."""
    if seconds < policy.min_cpu_seconds or calls < policy.min_cpu_calls:
        return (f"{seconds:.2f} s of CPU experts in {calls} decode calls, under the {policy.min_cpu_seconds:g} s "
                f"and {policy.min_cpu_calls} calls a figure needs")
    if scaled_bytes <= 0:
        return "no expert computed on the CPU in the decode steps"
    if busy < 0.5 * seconds:
        return "the calls' fixed costs explain most of the CPU time: no bandwidth to read from it"
    return None


def _figure(seconds: float, calls: int, misses: list[int] | tuple[int, ...], served: list[bool],
            terms: FigureTerms, policy: FigurePolicy) -> tuple[float | None, str]:
    """(decode_dram_figure, or None and why not)."""
    if len(misses) != len(served):
        return None, f"{len(misses)} layers of misses for {len(served)} layers"
    zero_copy, repacked = _split_misses(misses, served)
    scaled_bytes = terms.expert_bytes * (zero_copy + repacked / terms.repack_gain)
    busy = seconds - calls * terms.cpu_call_seconds
    why = _short_of(seconds, calls, busy, scaled_bytes, policy)
    return (None, why) if why is not None else (scaled_bytes / busy / 1e9, "")


def decode_dram_figure(seconds: float, calls: int, misses: list[int] | tuple[int, ...], served: list[bool],
                       terms: FigureTerms, policy: FigurePolicy = FigurePolicy()) -> float | None:
    """The planner's DRAM figure (zero-copy GB/s, the cost model's terms) that explains `seconds`
    of CPU-expert time in `calls` decode calls computing `misses` experts per layer: d =
    (zero-copy bytes + repacked bytes / gain) / (seconds - calls x the fixed call cost), the
    layers with cache slots (`served`) zero-copy, the others repacked. None with too little work."""
    return _figure(seconds, calls, misses, served, terms, policy)[0]


def run_dram_figure(runs: list[RunResult], plan: Any, served: list[bool]) -> float | None:
    """decode_dram_figure over the decode steps of all runs, in the plan's terms."""
    seconds, calls, misses = 0.0, 0, [0] * len(served)
    for r in runs:
        if len(r.decode_cpu_misses) != len(served):
            continue
        seconds += r.decode_cpu_seconds
        calls += r.decode_cpu_calls
        misses = [a + b for a, b in zip(misses, r.decode_cpu_misses)]
    return decode_dram_figure(seconds, calls, misses, served, FigureTerms.of_plan(plan))


def record_run_figure(model: Any, threads: int, gbps: float, hw: Any = None,
                      cache_dir: Path | None = None) -> float | None:
    """Keep the run's DRAM figure for the next plans on this machine (microbench.record_run_dram):
    `gbps`, or None where it could not be kept (no measurements for `threads`, cache dir not writable)."""
    from edge_moe.hardware import detect_hardware
    from edge_moe.microbench import record_run_dram

    c = model.cfg
    saved = record_run_dram(threads, hw or detect_hardware(), c.n_embd, c.n_ff_expert, c.n_expert_used, gbps,
                            cache_dir)
    return None if saved is None else gbps


@dataclass(frozen=True)
class RunFigure:
    """The DRAM figure of a generation's decode steps, and whether it was kept for later plans."""

    gbps: float | None  # None: too little CPU work in the decode steps to say
    recorded: bool
    note: str  # one line: what was kept, or why not
    cpu_seconds: float  # the decode steps' CPU-expert phase it comes from
    cpu_calls: int
    shape: str  # microbench.expert_shape_key: what later plans look it up by, with `threads`
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def keep_run_figure(model: Any, record: bool = True, policy: FigurePolicy | None = None,
                    cache_dir: Path | None = None, hw: Any = None) -> RunFigure:
    """The DRAM figure of `model`'s decode steps so far (`HybridModel.decode_cpu`), in the terms
    the planner uses for it (GGUF expert bytes, the cached per-call cost of this machine or the
    cost model's, the repack gain on CUDA), kept with the machine's measurements for the
    executor's thread count when `record`, the device and the work allow (RUN_FIGURE_POLICY).
    Never raises for a cache dir that cannot be read or written: the note says it was not kept."""
    from edge_moe.expert_bytes import quantized_expert_bytes
    from edge_moe.hardware import detect_hardware
    from edge_moe.microbench import cpu_call_seconds, expert_shape_key, load_cached

    policy = policy or RUN_FIGURE_POLICY
    c, work = model.cfg, model.decode_cpu
    threads = model.cpu.config.n_threads
    hw = hw or detect_hardware()
    measured = load_cached(threads, hw, cache_dir)
    call_s = cpu_call_seconds(measured)  # as the planner prices calls
    device = model.device.type
    terms = FigureTerms(quantized_expert_bytes(model.gguf, c), call_s, REPACK_DRAM_GAIN if device == "cuda" else 1.0)
    served = [model.gpu.serves(il) for il in range(c.n_layer)]
    gbps, why = _figure(work.seconds, work.calls, work.misses, served, terms, policy)
    shape = expert_shape_key(c.n_embd, c.n_ff_expert, c.n_expert_used)
    recorded = False
    if gbps is None:
        note = f"no DRAM figure: {why}"
    else:
        figure = f"DRAM {gbps:.1f} GB/s from {work.seconds:.2f} s of CPU experts in {work.calls} decode calls"
        if device not in policy.devices:
            runs = "/".join(policy.devices)
            note = f"{figure}, not kept: the dense part ran on the {device} (only {runs} runs keep it)"
        elif not record:
            note = f"{figure}, not kept (--no-record-figures)"
        elif measured is None:
            note = f"{figure}, not kept: no measurements of this machine for {threads} threads to keep it with"
        elif record_run_figure(model, threads, gbps, hw, cache_dir) is None:
            note = f"{figure}, not kept: the cache directory is not writable"
        else:
            recorded = True
            note = f"{figure}, kept for plans at {shape} experts with {threads} threads"
    return RunFigure(gbps, recorded, note, work.seconds, work.calls, shape, threads)
