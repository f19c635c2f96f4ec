"""Side-by-side report: edge-moe vs llama.cpp at the same VRAM budget, with the planner's prediction.

    python -m benchmarks.bench_report RESULTS_DIR [--out-md results.md] [--out-json results.json]

Reads every `llama_*.json` (benchmarks/llama_bench_runner.py) and `edge_*.json` (`edge-moe bench
-o`) in RESULTS_DIR. One row per edge-moe result (shape, VRAM budget, routing), next to the
llama.cpp result of the same shape (its `--label`) and budget: llama.cpp's placement is static,
so its numbers do not depend on routing and repeat on both routing rows. Ratios are edge-moe /
llama.cpp (> 1: edge-moe faster), with the stddev propagated from both sides' relative stddevs.
"pred" is the planner's decode prediction for the same config (on the replayed trace for
replay rows) and pred/meas its accuracy (the planner's target is within +-15 %).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 2**30


@dataclass(frozen=True)
class Row:
    shape: str
    budget_gib: float
    routing: str
    llama_ncmoe: int | None
    llama_vram_gib: float | None
    llama_decode: tuple[float, float] | None  # (mean, std) tok/s
    llama_prefill: tuple[float, float] | None
    edge_cache: str
    edge_vram_gib: float | None
    edge_decode: tuple[float, float]
    edge_prefill: tuple[float, float]
    edge_ttft_ms: tuple[float, float]
    hit_rate: float
    dram_mib_per_token: float
    pcie_mib_per_token: float
    host_rss_gib: float
    predicted_decode: float | None
    complete: bool
    cpu_gbps: float | None = None  # the CPU expert path in the run's decode steps (bench.cpu_in_situ)
    cpu_planned_gbps: float | None = None  # what the planner assumed for the same work
    predicted_at_in_situ: float | None = None  # the prediction with the run's own CPU time

    @property
    def decode_ratio(self) -> tuple[float, float] | None:
        return ratio(self.edge_decode, self.llama_decode)

    @property
    def prefill_ratio(self) -> tuple[float, float] | None:
        return ratio(self.edge_prefill, self.llama_prefill)

    @property
    def prediction_accuracy(self) -> float | None:
        if self.predicted_decode is None or self.edge_decode[0] <= 0:
            return None
        return self.predicted_decode / self.edge_decode[0]

    @property
    def accuracy_at_in_situ(self) -> float | None:
        if self.predicted_at_in_situ is None or self.edge_decode[0] <= 0:
            return None
        return self.predicted_at_in_situ / self.edge_decode[0]


def ratio(a: tuple[float, float], b: tuple[float, float] | None) -> tuple[float, float] | None:
    """a / b with the stddev of independent measurements: r * sqrt((sa/a)^2 + (sb/b)^2)."""
    if b is None or b[0] <= 0 or a[0] <= 0:
        return None
    r = a[0] / b[0]
    return r, r * math.hypot(a[1] / a[0], b[1] / b[0])


def _ms(d: dict[str, float]) -> tuple[float, float]:
    return float(d["mean"]), float(d["std"])


def edge_row(e: dict[str, Any], llama: dict[str, dict[str, Any]]) -> Row:
    c, s = e["config"], e["summary"]
    shape = c.get("label") or e["model"]["arch"]
    budget = c.get("vram_budget_gib") or c.get("gpu_budget_gib") or 0.0
    lrow = llama.get(shape, {}).get("budgets", {}).get(f"{budget:g}")
    if lrow is not None and "error" in lrow:
        lrow = None
    cache = e["cache"]
    geo = "none" if cache is None else (f"{cache['n_sets']}x{cache['n_ways']} {cache['admission']}"
                                        + (f" +{cache['pinned_layers']}P" if cache.get("pinned_layers") else ""))
    gpu = e["memory"]["gpu"]
    plan = e["plan"]
    pred = plan["predicted_decode_tps_on_trace"] if c["routing"] == "replay" else plan["predicted_decode_tps"]
    cpu = e.get("cpu_in_situ")  # absent in results written before session 8
    return Row(shape=shape, budget_gib=float(budget), routing=c["routing"],
               llama_ncmoe=None if lrow is None else lrow["n_cpu_moe"],
               llama_vram_gib=None if lrow is None or lrow["peak_vram_bytes"] is None
               else lrow["peak_vram_bytes"] / GIB,
               llama_decode=None if lrow is None else _ms(lrow["decode_tps"]),
               llama_prefill=None if lrow is None else _ms(lrow["prefill_tps"]),
               edge_cache=geo, edge_vram_gib=gpu["peak_vram_bytes"] / GIB if gpu else None,
               edge_decode=_ms(s["decode_tps"]), edge_prefill=_ms(s["prefill_tps"]),
               edge_ttft_ms=(s["ttft_seconds"]["mean"] * 1e3, s["ttft_seconds"]["std"] * 1e3),
               hit_rate=s["hit_rate"]["mean"], dram_mib_per_token=s["dram_bytes_per_token"]["mean"] / 2**20,
               pcie_mib_per_token=s["pcie_bytes_per_token"]["mean"] / 2**20,
               host_rss_gib=e["memory"]["host"]["peak_rss_bytes"] / GIB, predicted_decode=pred,
               complete=bool(e["complete"]),
               cpu_gbps=None if cpu is None else cpu["gbps"]["mean"],
               cpu_planned_gbps=None if cpu is None else cpu["planned_gbps"]["mean"],
               predicted_at_in_situ=None if cpu is None else cpu["predicted_decode_tps_at_in_situ"]["mean"])


def load_dir(d: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    edges = [json.loads(p.read_text()) for p in sorted(d.glob("edge_*.json"))]
    llama = {}
    for p in sorted(d.glob("llama_*.json")):
        r = json.loads(p.read_text())
        llama[r.get("label") or p.stem.removeprefix("llama_")] = r
    return edges, llama


def _pm(v: tuple[float, float] | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(rows: list[Row]) -> str:
    head = ("| shape | VRAM budget | routing | llama.cpp -ncmoe | llama.cpp VRAM | edge-moe cache | edge-moe VRAM "
            "| decode llama.cpp | decode edge-moe | **decode ratio** | planner pred | pred/meas "
            "| CPU GB/s run / plan | pred/meas at run's CPU "
            "| prefill llama.cpp | prefill edge-moe | **prefill ratio** | TTFT edge-moe ms | hit rate "
            "| DRAM MiB/tok | PCIe MiB/tok | host RSS GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (r.shape, r.budget_gib, r.routing)):
        lines.append("| " + " | ".join([
            r.shape, f"{r.budget_gib:g} GiB", r.routing + ("" if r.complete else " (incomplete)"),
            _num(r.llama_ncmoe, "d"), _num(r.llama_vram_gib, ".2f"), r.edge_cache, _num(r.edge_vram_gib, ".2f"),
            _pm(r.llama_decode), _pm(r.edge_decode), f"**{_pm(r.decode_ratio)}**", _num(r.predicted_decode, ".2f"),
            _num(r.prediction_accuracy, ".2f"),
            "-" if r.cpu_gbps is None else f"{r.cpu_gbps:.1f} / {r.cpu_planned_gbps:.1f}",
            _num(r.accuracy_at_in_situ, ".2f"), _pm(r.llama_prefill, 0), _pm(r.edge_prefill, 0),
            f"**{_pm(r.prefill_ratio)}**", _pm(r.edge_ttft_ms, 0), f"{r.hit_rate:.3f}", f"{r.dram_mib_per_token:.1f}",
            f"{r.pcie_mib_per_token:.1f}", f"{r.host_rss_gib:.1f}"]) + " |")
    lines.append("")
    lines.append("Ratios are edge-moe / llama.cpp (> 1: edge-moe faster), mean ± stddev over the repeats. "
                 "llama.cpp's placement is static (`-ngl 99 --n-cpu-moe N`, the smallest N that fits the "
                 "budget), so its speed does not depend on routing: the same llama.cpp numbers stand on the "
                 "natural and replay rows. pred/meas: the planner's predicted decode tok/s over the measured one. "
                 "CPU GB/s run / plan: expert bytes the CPU read in the decode steps over the seconds of its "
                 "CPU expert phase, and over the time the planner's figures give the same calls and bytes; "
                 "pred/meas at run's CPU: the prediction with its CPU time swapped for the measured one "
                 "(what is left is hit rate, GPU and host overheads).")
    return "\n".join(lines)


def breakdowns(edges: list[dict[str, Any]]) -> str:
    from edge_moe.layer_profile import format_breakdown

    out = []
    for e in edges:
        b = e.get("breakdown")
        if not b:
            continue
        c = e["config"]
        budget = c.get("vram_budget_gib") or c.get("gpu_budget_gib")
        out += [f"### {c.get('label') or e['model']['arch']}, {budget} GiB, {c['routing']}: one decode token",
                f"token {b['token_ms']:.2f} ms = layers {b['layers_ms']:.2f} + outside layers "
                f"{b['outside_layers_ms']:.2f} (ms, profiled)", "", format_breakdown(b, max_rows=8), ""]
        p = e.get("prefill_breakdown")
        if p:
            out += [f"### {c.get('label') or e['model']['arch']}, {budget} GiB, {c['routing']}: one prefill of "
                    f"{p['prompt_tokens']} tokens",
                    f"prefill {p['token_ms']:.2f} ms = layers {p['layers_ms']:.2f} + outside layers "
                    f"{p['outside_layers_ms']:.2f} (ms, profiled)", "", format_breakdown(p, max_rows=4), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="folder with llama_*.json and edge_*.json")
    ap.add_argument("--out-md", type=Path, default=None, help="default: RESULTS/results.md")
    ap.add_argument("--out-json", type=Path, default=None, help="default: RESULTS/results.json")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        ap.error(f"{args.results}: no such folder")
    edges, llama = load_dir(args.results)
    if not edges:
        ap.error(f"{args.results}: no edge_*.json results")
    rows = [edge_row(e, llama) for e in edges]
    md = "\n\n".join([markdown(rows), "## Where the time goes (per layer: one decode token, one prefill)", breakdowns(edges)])
    (args.out_md or args.results / "results.md").write_text(md)
    data = [asdict(r) | {"decode_ratio": r.decode_ratio, "prefill_ratio": r.prefill_ratio,
                         "prediction_accuracy": r.prediction_accuracy,
                         "accuracy_at_in_situ": r.accuracy_at_in_situ} for r in rows]
    (args.out_json or args.results / "results.json").write_text(json.dumps(
        {"rows": data, "llama_cpp": llama, "edge_moe": edges}, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
