"""What a plan is: the user's flags (`PlanOverrides`), the run plan (`Plan`) and its text.

edge_moe/planner.py makes plans (`make_plan`, `plan_for_machine`); the CLI, the bench and
the TUI read them. Explicit user flags (`PlanOverrides`) always win over the planner's
choices and are recorded in `Plan.notes`. `Plan.planned_vram_bytes` is what the plan puts on
the GPU, RUNTIME_RESERVE_BYTES (the CUDA context and the allocator's slack) included: with a
total VRAM budget (`--vram-budget`) that is what stays within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edge_moe.expert_cache import CacheConfig, parse_replace_policy
from edge_moe.hardware import GIB
from edge_moe.placement import placement_text

# With --vram-budget (a total for the process), the CUDA context and the allocator's slack are
# part of the budget but of no tensor: set aside this much for them. The context (NVML process
# usage minus torch's reserved memory, reported by `edge-moe bench`) measured 0.73-0.77 GiB in
# all nine runs on the H100 box (torch 2.x, CUDA 12, cuBLAS and Triton modules loaded;
# 2026-11-24); the slack covers the allocator's rounding and the decode graphs' pool, which
# the plan's tensor sizes do not count.
CUDA_CONTEXT_BYTES = 800 << 20
ALLOCATOR_SLACK_BYTES = 160 << 20
RUNTIME_RESERVE_BYTES = CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK_BYTES  # in the budget, in no tensor


@dataclass(frozen=True)
class PlanOverrides:
    """User flags; None = let the planner choose."""

    device: str | None = None  # "cpu" | "cuda"
    threads: int | None = None
    n_ctx: int | None = None
    gpu_budget_gib: float | None = None  # expert slots only
    vram_budget_gib: float | None = None  # everything on the GPU: dense, KV, workspace, slots, CUDA context
    n_sets: int | None = None
    n_ways: int | None = None
    policy: str | None = None  # replacement: LRU | FIFO | LFU | random
    quota: int | None = None
    admission: str | None = None  # all | reuse
    pinned_layers: int | None = None  # the last P layers keep every expert (CacheConfig.pinned_layers)

    def __post_init__(self) -> None:
        if self.device is not None and self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.pinned_layers is not None and self.pinned_layers < 0:
            raise ValueError(f"pinned_layers must be >= 0, got {self.pinned_layers}")
        for name in ("threads", "n_ctx", "n_sets", "n_ways"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.quota is not None and self.quota < 0:
            raise ValueError(f"quota must be >= 0, got {self.quota}")
        if self.gpu_budget_gib is not None and not (self.gpu_budget_gib >= 0 and math.isfinite(self.gpu_budget_gib)):
            raise ValueError(f"gpu_budget_gib must be >= 0, got {self.gpu_budget_gib}")
        if self.vram_budget_gib is not None:
            if not (self.vram_budget_gib > 0 and math.isfinite(self.vram_budget_gib)):
                raise ValueError(f"vram_budget_gib must be > 0, got {self.vram_budget_gib}")
            if self.gpu_budget_gib is not None:
                raise ValueError("give either a total VRAM budget (--vram-budget) or an expert-slot budget "
                                 "(--gpu-budget), not both")
            if self.device == "cpu":
                raise ValueError("a VRAM budget needs device cuda, not cpu")
        if self.policy is not None:
            parse_replace_policy(self.policy)
        if self.admission is not None and self.admission not in ("all", "reuse"):
            raise ValueError(f"admission must be 'all' or 'reuse', got {self.admission!r}")

    @property
    def forces_cache(self) -> bool:
        return (self.gpu_budget_gib is not None or self.n_sets is not None or self.n_ways is not None
                or bool(self.pinned_layers))


@dataclass(frozen=True)
class Plan:
    model: str
    device: str  # "cuda" | "cpu": where the dense weights, the KV cache and the cache go
    threads: int
    n_ctx: int
    cache: CacheConfig | None
    expert_budget_bytes: int  # VRAM the slots use (pinned layers' and the sets'); 0 without cache
    slot_bytes: int  # one cached expert (its GGUF bytes, parts aligned)
    expert_bytes: int  # one expert as stored in the GGUF: what a CPU miss reads
    dense_bytes: int  # non-expert weights on `device` in `dense_format` (fp16 or GGUF blocks; fp32 on the CPU)
    kv_bytes: int
    workspace_bytes: int  # last logits, a prefill chunk's attention scores (upper bound); cuda: + stream ring
    vram_free_bytes: int | None
    margin_bytes: int
    dram_gbps: float
    pcie_gbps: float | None
    gpu_gbps: float | None
    figures_source: str  # "measured" | "profile <name>"
    hit_rate: float | None  # simulated, on `routing_source`
    routing_source: str
    predicted_decode_tps: float
    predicted_prefill_tps: float
    no_cache_decode_tps: float
    notes: list[str] = field(default_factory=list)
    vram_budget_bytes: int | None = None  # --vram-budget: the total the plan keeps within
    dense_format: str = "fp16"  # how the executor's dense_format "auto" keeps them on `device` (dense_weights.py)
    prefill_chunk: int = 512  # tokens per prefill step (ExecutorConfig.prefill_chunk): sizes the workspace
    cpu_call_seconds: float = 0.0  # the fixed cost of one ggml call the prediction assumed
    decode_stream: tuple[int, ...] | None = None  # GpuExpertsConfig.decode_stream (cost_model.stream_split)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.threads < 1 or self.n_ctx < 1:
            raise ValueError(f"threads and n_ctx must be >= 1, got {self.threads}, {self.n_ctx}")
        for name in ("predicted_decode_tps", "predicted_prefill_tps", "no_cache_decode_tps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive and finite, got {v}")
        if self.cache is not None and self.device != "cuda":
            raise ValueError("an expert cache needs device cuda")

    def gpu_experts_config(self) -> Any:
        """The executor's GpuExpertsConfig for this plan: its cache and decode streaming; None
        without a cache (then there is nothing on the GPU to configure)."""
        if self.cache is None or self.device != "cuda":
            return None
        from edge_moe.gpu_experts import GpuExpertsConfig  # (torch: not at import time)

        return GpuExpertsConfig(self.cache, decode_stream=self.decode_stream)

    @property
    def admission(self) -> str | None:
        return None if self.cache is None else self.cache.admission.rule.value

    @property
    def quota(self) -> int | None:
        return None if self.cache is None else self.cache.admission.max_fills_per_token

    @property
    def planned_vram_bytes(self) -> int:
        """What the plan puts on the GPU, the CUDA context's estimate included (0 on the CPU)."""
        if self.device != "cuda":
            return 0
        return (self.dense_bytes + self.kv_bytes + self.workspace_bytes + self.expert_budget_bytes
                + RUNTIME_RESERVE_BYTES)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "cache"}
        c = self.cache
        d["cache"] = None if c is None else {"n_sets": c.n_sets, "n_ways": c.n_ways, "replace": c.replace.value,
                                             "admission": self.admission, "quota": self.quota,
                                             "pinned_layers": c.pinned_layers}
        d["notes"] = list(self.notes)
        return d


def format_plan(plan: Plan) -> str:
    p, gib = plan, GIB
    cache = "none (every expert on the CPU)" if p.cache is None else (
        f"{placement_text(p.cache)}, {p.cache.replace.value}, admission {p.admission}"
        + ("" if p.quota is None else f", quota {p.quota}") + f" ({p.expert_budget_bytes / gib:.2f} GiB)")
    vram = "-" if p.vram_free_bytes is None else (f"{p.vram_free_bytes / gib:.2f} GiB free, "
                                                  f"margin {p.margin_bytes / gib:.2f} GiB")
    rows = [
        ("model", p.model),
        ("device", f"{p.device}; dense weights on {'GPU' if p.device == 'cuda' else 'CPU'}, threads {p.threads}"),
        ("context", str(p.n_ctx)),
        ("VRAM", vram),
        ("memory", f"dense {p.dense_bytes / gib:.2f} GiB ({p.dense_format}), KV {p.kv_bytes / gib:.2f} GiB, "
                   f"workspace {p.workspace_bytes / gib:.2f} GiB"
                   + ("" if p.vram_budget_bytes is None else
                      f"; {p.planned_vram_bytes / gib:.2f} of the {p.vram_budget_bytes / gib:g} GiB VRAM budget")),
        ("expert", f"{p.expert_bytes / 2**20:.2f} MiB in the GGUF, {p.slot_bytes / 2**20:.2f} MiB per slot"),
        ("cache", cache),
        ("figures", f"{p.figures_source}: DRAM {p.dram_gbps:.1f} GB/s, PCIe "
                    f"{'-' if p.pcie_gbps is None else f'{p.pcie_gbps:.1f}'} GB/s, GPU "
                    f"{'-' if p.gpu_gbps is None else f'{p.gpu_gbps:.0f}'} GB/s"),
        ("decode", f"{p.predicted_decode_tps:.2f} tok/s predicted (no cache {p.no_cache_decode_tps:.2f})"
                   + ("" if p.hit_rate is None else f", hit rate {p.hit_rate:.2f} on {p.routing_source}")),
        ("prefill", f"{p.predicted_prefill_tps:.0f} tok/s (first estimate)"),
    ]
    width = max(len(n) for n, _ in rows)
    lines = [f"{n:<{width}}  {v}" for n, v in rows]
    return "\n".join(lines + [f"  - {note}" for note in p.notes])
