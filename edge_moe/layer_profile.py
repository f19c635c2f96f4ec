"""Per-layer time breakdown of the executor's steps, for "why is this token slow".

Attach a `LayerProfiler` to a `HybridModel` (`model.profiler = LayerProfiler(...)`, or
`ExecutorConfig(profile_layers=True)`); every forward then records, per layer, the wall time
of each phase of DESIGN.md's decode step:

    attention      norm, attention with the KV cache, residual, FFN norm (synchronized)
    router_sync    router, top-k, the ids and weights to the host (the executor's own sync)
    gpu_enqueue    cache lookup, the hidden vector to the host, enqueueing the hit FFNs
    cpu_experts    ggml computing the misses (the CPU's share; GPU hits run meanwhile)
    wait_gpu       from CPU done until the device is idle: the GPU's share beyond the CPU's
    fills          admissions: host dequantization, staging, copies (synchronized, so a fill
                   that would overlap later layers is billed here)
    shared_expert  the shared expert (qwen2moe), when the model has one

and `gpu_experts`, the device time of the hit FFNs measured with CUDA events (it overlaps
cpu_experts, so it is not part of the wall-clock sum). Profiling synchronizes the device
after every phase but the enqueue and the CPU work (which keep overlapping as in a normal
step), so a profiled token is somewhat slower than an unprofiled one; the executor does none
of this when no profiler is attached (a `None` check per phase).

With CUDA decode graphs (edge_moe/decode_graphs.py) "attention" includes the router (one
graph) and "router_sync" is the host's lookup and pair table; when every expert is cached a
token is a single graph and its whole time is billed to layer 0's wait_gpu.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PHASES = ("attention", "router_sync", "gpu_enqueue", "cpu_experts", "wait_gpu", "fills", "shared_expert")
_INDEX = {p: i for i, p in enumerate(PHASES)}


@dataclass
class LayerProfiler:
    device: torch.device
    n_layer: int
    seconds: np.ndarray = field(init=False)  # [n_layer, len(PHASES)] summed over profiled tokens
    gpu_expert_seconds: np.ndarray = field(init=False)  # [n_layer] device time of the hit FFNs
    tokens: int = 0  # forwards profiled
    _t: float = 0.0
    _pending: list[tuple[int, Any, Any]] = field(default_factory=list)  # (layer, start, end) CUDA events
    _gpu_t0: float = 0.0

    def __post_init__(self) -> None:
        if self.n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {self.n_layer}")
        self.device = torch.device(self.device)
        self.seconds = np.zeros((self.n_layer, len(PHASES)))
        self.gpu_expert_seconds = np.zeros(self.n_layer)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start_layer(self) -> None:
        """Before a layer's first phase: the queue is drained so no earlier work is billed here."""
        self._sync()
        self._t = time.perf_counter()

    @staticmethod
    def phase_index(phase: str) -> int:
        return _INDEX[phase]

    def lap(self, layer: int, phase: str, sync: bool = True) -> None:
        """Bill the time since the last mark to `phase` (after draining the device if `sync`)."""
        if sync:
            self._sync()
        now = time.perf_counter()
        self.seconds[layer, _INDEX[phase]] += now - self._t
        self._t = now

    def gpu_begin(self) -> None:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._pending.append((-1, start, None))
        else:
            self._gpu_t0 = time.perf_counter()

    def gpu_end(self, layer: int) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            _, start, _ = self._pending.pop()
            self._pending.append((layer, start, end))
        else:
            self.gpu_expert_seconds[layer] += time.perf_counter() - self._gpu_t0

    def end_token(self) -> None:
        self._sync()
        for layer, start, end in self._pending:
            self.gpu_expert_seconds[layer] += start.elapsed_time(end) / 1e3
        self._pending.clear()
        self.tokens += 1

    def reset(self) -> None:
        self.seconds[:] = 0.0
        self.gpu_expert_seconds[:] = 0.0
        self.tokens = 0

    # ---- reports -----------------------------------------------------------------------

    def per_token_ms(self) -> dict[str, list[float]]:
        """Milliseconds per profiled token, per layer, for every phase (and gpu_experts)."""
        n = max(self.tokens, 1)
        out = {p: (self.seconds[:, i] * 1e3 / n).round(4).tolist() for i, p in enumerate(PHASES)}
        out["gpu_experts"] = (self.gpu_expert_seconds * 1e3 / n).round(4).tolist()
        return out

    def to_dict(self) -> dict[str, Any]:
        per = self.per_token_ms()
        totals = {p: round(sum(v), 4) for p, v in per.items()}
        return {"tokens": self.tokens, "phases": list(PHASES) + ["gpu_experts"], "per_layer_ms": per,
                "total_ms": totals, "layers_ms": round(sum(totals[p] for p in PHASES), 4)}


def format_breakdown(d: dict[str, Any], max_rows: int = 64) -> str:
    """A markdown table: one row per layer, one column per phase, ms per token, and a total row."""
    phases = d["phases"]
    per = d["per_layer_ms"]
    n_layer = len(per[phases[0]])
    head = "| layer | " + " | ".join(phases) + " | wall sum |"
    rule = "|---:|" + "---:|" * (len(phases) + 1)
    rows = [head, rule]
    wall = [p for p in phases if p != "gpu_experts"]
    for layer in range(min(n_layer, max_rows)):
        vals = [per[p][layer] for p in phases]
        rows.append(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in vals)
                    + f" | {sum(per[p][layer] for p in wall):.3f} |")
    if n_layer > max_rows:
        rows.append(f"| ... {n_layer - max_rows} more | " + " | ".join("" for _ in phases) + " | |")
    tot = d["total_ms"]
    rows.append("| **all** | " + " | ".join(f"**{tot[p]:.3f}**" for p in phases) + f" | **{d['layers_ms']:.3f}** |")
    return "\n".join(rows)
