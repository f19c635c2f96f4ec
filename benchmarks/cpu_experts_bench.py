"""Benchmark of the CPU expert path (edge_moe/cpu_experts.py): effective GB/s and per-call overhead.

Effective GB/s = bytes of the distinct experts a call computes (their gate + up + down)
divided by the call's wall time. Weights are random but valid (ggml-quantized rows tiled),
spread over enough separate layers (> --stream-gb in all, cycled, random expert ids per
call) that they stream from DRAM rather than from the last-level cache.

    python benchmarks/cpu_experts_bench.py --threads 16                  # GPU machine: Mixtral + Qwen3 shapes
    python benchmarks/cpu_experts_bench.py --threads 2 --stream-gb 1.2   # a small dev box
    python benchmarks/cpu_experts_bench.py --repack-compare              # zero-copy vs CPU_REPACK

Prints a table and writes JSON (--json). Not a unit test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine, validate_routing  # noqa: E402
from edge_moe.expert_weights import ExpertWeights, WeightTensor  # noqa: E402
from edge_moe.ggml_lib import ggml_version, load_ggml, quantize_rows, row_bytes  # noqa: E402


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_ff: int
    n_expert: int
    top_k: int


SHAPES = {
    "mixtral": Shape(4096, 14336, 8, 2),  # Mixtral-8x7B: ~99 MB per Q4_0 expert
    "qwen3": Shape(2048, 768, 128, 8),  # Qwen3-30B-A3B: ~2.7 MB per Q4_0 expert
}
OVERHEAD_SHAPE = Shape(64, 64, 8, 2)  # tiny experts: the time is per-call overhead


@dataclass
class Result:
    shape: str
    ggml_type: str
    layout: str  # "zero-copy" or "repack"
    threads: int
    tokens: int
    layers: int
    calls: int
    ms_per_call: float
    mb_per_call: float
    gb_per_s: float


def random_tensor(rng: np.random.Generator, ggml_type: GGMLQuantizationType,
                  shape: tuple[int, int, int]) -> WeightTensor:
    """Valid random weights, fast: 64 quantized random rows tiled over the whole tensor."""
    n_rows = shape[1] * shape[2]
    seed_rows = quantize_rows(rng.standard_normal((64, shape[0]), dtype=np.float32) * 0.02, ggml_type)
    data = np.empty((n_rows, row_bytes(ggml_type, shape[0])), np.uint8)
    for start in range(0, n_rows, 64):
        data[start:start + 64] = seed_rows[:n_rows - start]
    return WeightTensor(data.reshape(-1), ggml_type, shape)


def random_layer(rng: np.random.Generator, s: Shape, ggml_type: GGMLQuantizationType) -> ExpertWeights:
    return ExpertWeights(random_tensor(rng, ggml_type, (s.n_embd, s.n_ff, s.n_expert)),
                         random_tensor(rng, ggml_type, (s.n_embd, s.n_ff, s.n_expert)),
                         random_tensor(rng, ggml_type, (s.n_ff, s.n_embd, s.n_expert)))


def layer_bytes(s: Shape, ggml_type: GGMLQuantizationType) -> int:
    return s.n_expert * (2 * s.n_ff * row_bytes(ggml_type, s.n_embd) + s.n_embd * row_bytes(ggml_type, s.n_ff))


def random_routing(rng: np.random.Generator, s: Shape, n_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.standard_normal((n_tokens, s.n_embd), dtype=np.float32)
    ids = np.stack([rng.choice(s.n_expert, s.top_k, replace=False) for _ in range(n_tokens)]).astype(np.int32)
    w = rng.random((n_tokens, s.top_k), dtype=np.float32)
    return x, ids, w


def run_bandwidth(name: str, s: Shape, layers: list[ExpertWeights], args: argparse.Namespace, repack: bool,
                  n_tokens: int) -> Result:
    rng = np.random.default_rng(1)
    with CpuExpertEngine(CpuExpertConfig(n_threads=args.threads, repack=repack)) as engine:
        prepared = [engine.prepare(w) for w in layers]
        routings = [random_routing(rng, s, n_tokens) for _ in range(64)]
        expert_bytes = layers[0].bytes_per_expert()
        call_bytes = [len(np.unique(ids)) * expert_bytes for _, ids, _ in routings]  # distinct experts read
        for i in range(2 * len(prepared)):  # warm-up: graphs built, pages touched
            engine.forward(prepared[i % len(prepared)], *routings[i % len(routings)])
        calls, moved, start = 0, 0, time.perf_counter()
        while calls < args.min_calls or time.perf_counter() - start < args.seconds:
            engine.forward(prepared[calls % len(prepared)], *routings[calls % len(routings)])
            moved += call_bytes[calls % len(routings)]
            calls += 1
        elapsed = time.perf_counter() - start
    return Result(name, layers[0].gate.ggml_type.name, "repack" if repack else "zero-copy", args.threads,
                  n_tokens, len(layers), calls, elapsed / calls * 1e3, moved / calls / 1e6, moved / elapsed / 1e9)


def run_overhead(args: argparse.Namespace) -> dict[str, float]:
    """Per-call cost at T=1 on tiny experts, split into validation, ggml compute and the rest."""
    s, rng = OVERHEAD_SHAPE, np.random.default_rng(2)
    with CpuExpertEngine(CpuExpertConfig(n_threads=args.threads)) as engine:
        layer = engine.prepare(random_layer(rng, s, GGMLQuantizationType.Q4_0))
        x, ids, w = random_routing(rng, s, 1)
        n = 5000
        for _ in range(200):
            engine.forward(layer, x, ids, w)
        t0 = time.perf_counter()
        for _ in range(n):
            engine.forward(layer, x, ids, w)
        t1 = time.perf_counter()
        for _ in range(n):
            validate_routing(x, ids, w, s.n_embd, s.n_expert)
        t2 = time.perf_counter()
        graph = next(iter(engine._graphs.values()))  # the one cached graph: time ggml alone
        compute, cgraph, plan = load_ggml().cpu.ggml_graph_compute, graph.cgraph, graph.plan_ref
        for _ in range(n):
            compute(cgraph, plan)
        t3 = time.perf_counter()
    forward_us, validate_us, compute_us = ((b - a) / n * 1e6 for a, b in ((t0, t1), (t1, t2), (t2, t3)))
    return {"forward_us": forward_us, "validate_us": validate_us, "ggml_compute_us": compute_us,
            "python_overhead_us": forward_us - compute_us}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    p.add_argument("--shapes", default="mixtral,qwen3", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--type", default="Q4_0", help="ggml type of the expert weights")
    p.add_argument("--tokens", default="1", help="comma list of T (tokens per call)")
    p.add_argument("--stream-gb", type=float, default=2.5, help="total weight bytes per shape (> L3)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--min-calls", type=int, default=20)
    p.add_argument("--repack", action="store_true", help="use CPU_REPACK weights instead of zero-copy")
    p.add_argument("--repack-compare", action="store_true", help="measure both layouts")
    p.add_argument("--json", type=Path, default=Path("cpu_experts_bench.json"))
    args = p.parse_args()

    ggml_type = GGMLQuantizationType[args.type]
    layouts = [False, True] if args.repack_compare else [args.repack]
    rng = np.random.default_rng(0)
    results: list[Result] = []
    print(f"{'shape':8} {'type':5} {'layout':9} {'thr':>3} {'T':>4} {'layers':>6} {'calls':>6} "
          f"{'ms/call':>8} {'MB/call':>8} {'GB/s':>6}")
    for name in args.shapes.split(","):
        s = SHAPES[name]
        one_layer = layer_bytes(s, ggml_type)
        n_layers = max(2, math.ceil(args.stream_gb * 1e9 / one_layer))
        print(f"[{name}] {n_layers} layers x {one_layer / 1e6:.0f} MB of {ggml_type.name} weights ...",
              file=sys.stderr, flush=True)
        layers = [random_layer(rng, s, ggml_type) for _ in range(n_layers)]
        for repack in layouts:
            for n_tokens in (int(t) for t in args.tokens.split(",")):
                results.append(run_bandwidth(name, s, layers, args, repack, n_tokens))
                print_row(results[-1])
        del layers
    overhead = run_overhead(args)

    print(f"\nper-call at T=1, tiny experts ({OVERHEAD_SHAPE}), {args.threads} threads: "
          + ", ".join(f"{k} {v:.1f}" for k, v in overhead.items()))
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "physical_cores": psutil.cpu_count(logical=False), "logical_cores": psutil.cpu_count(),
                    "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
                    "ggml": ggml_version(), "avx2": bool(load_ggml().cpu.ggml_cpu_has_avx2()),
                    "avx512": bool(load_ggml().cpu.ggml_cpu_has_avx512())},
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
        "overhead_t1": overhead,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


def print_row(r: Result) -> None:
    print(f"{r.shape:8} {r.ggml_type:5} {r.layout:9} {r.threads:3d} {r.tokens:4d} {r.layers:6d} {r.calls:6d} "
          f"{r.ms_per_call:8.3f} {r.mb_per_call:8.1f} {r.gb_per_s:6.2f}", flush=True)


if __name__ == "__main__":
    main()
