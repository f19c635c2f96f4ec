"""Routing traces: record what the router chose and where it ran; replay a trace's routing.

Recording is passive (a callback on the executor). Replay is for benchmarks and simulations
only: it overrides the router's expert choice with the trace's, so the model's output is no
longer the model's; the CLI prints a warning and never mixes it with normal inference.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_moe.errors import EdgeMoeError, ModelFormatError


@dataclass
class TraceRecord:
    position: int  # token position in the context
    layer: int
    experts: list[int]  # the router's top-k, in its order
    hits: list[bool]  # served from the GPU cache
    t: float  # seconds since the recorder started, when the layer routed


@dataclass
class TraceRecorder:
    records: list[TraceRecord] = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter)

    def attach(self, model: object) -> None:
        model.on_route.append(lambda layer, logits, ids, hit: self._record(model, layer, ids, hit))  # type: ignore[attr-defined]

    def _record(self, model: object, layer: int, ids: np.ndarray, hit: np.ndarray) -> None:
        now = time.perf_counter() - self._t0
        base = model.n_past  # type: ignore[attr-defined]
        for t in range(ids.shape[0]):
            self.records.append(TraceRecord(base + t, layer, ids[t].tolist(), hit[t].tolist(), now))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        rows = [r.__dict__ for r in self.records]
        if path.suffix == ".csv":
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["position", "layer", "experts", "hits", "t"])
                for r in self.records:
                    w.writerow([r.position, r.layer, " ".join(map(str, r.experts)),
                                " ".join(str(int(h)) for h in r.hits), f"{r.t:.6f}"])
        else:
            path.write_text(json.dumps({"format": "edge-moe-trace-v1", "records": rows}))
        return path

    def expert_array(self, n_layer: int) -> np.ndarray:
        """[positions, n_layer, k] int16 of the recorded choices (the replay format)."""
        n_pos = max(r.position for r in self.records) + 1
        k = len(self.records[0].experts)
        out = np.full((n_pos, n_layer, k), -1, dtype=np.int16)
        for r in self.records:
            out[r.position, r.layer] = r.experts
        return out


class ReplayRouting:
    """Expert choices from a trace, by position: [positions, n_layer, k]."""

    def __init__(self, experts: np.ndarray, source: str) -> None:
        self.experts = experts
        self.source = source

    @classmethod
    def load(cls, path: str | Path, problem: str = "0") -> "ReplayRouting":
        """A `.npz` trace in ../shared/traces' format (`experts_<p>` [tokens, layers, k]) or our JSON."""
        path = Path(path)
        if not path.is_file():
            raise ModelFormatError(path, "no such trace file")
        if path.suffix == ".npz":
            with np.load(path) as data:
                key = f"experts_{problem}"
                if key not in data:
                    raise ModelFormatError(path, f"no array {key!r} (has: {', '.join(data.files)})")
                return cls(np.asarray(data[key], dtype=np.int64), f"{path.name}:{key}")
        try:
            recs = json.loads(path.read_text())["records"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelFormatError(path, f"not an edge-moe trace: {e}") from None
        rec = TraceRecorder([TraceRecord(**r) for r in recs])
        n_layer = max(r.layer for r in rec.records) + 1
        return cls(rec.expert_array(n_layer).astype(np.int64), path.name)

    def check_model(self, n_layer: int, n_expert: int, k: int) -> None:
        _, layers, kk = self.experts.shape
        if layers != n_layer or kk != k or self.experts.max() >= n_expert or self.experts.min() < 0:
            raise EdgeMoeError(f"trace {self.source} ({layers} layers, top-{kk}, expert ids up to "
                               f"{int(self.experts.max())}) does not fit this model ({n_layer} layers, "
                               f"top-{k}, {n_expert} experts)")

    def for_positions(self, start: int, n: int) -> np.ndarray:
        """[n_layer, n, k] choices for positions start .. start+n-1 (the trace wraps around)."""
        idx = np.arange(start, start + n) % self.experts.shape[0]
        return np.ascontiguousarray(self.experts[idx].transpose(1, 0, 2))
