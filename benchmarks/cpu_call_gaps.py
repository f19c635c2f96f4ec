"""Per-call time of the CPU expert path for a few missed experts, with and without idle gaps.

In decode each layer calls the CPU path once for its misses (1-3 small experts for Qwen3 at
12 GiB) after ~0.2-0.5 ms in which the CPU waits for the GPU's front graph. This measures
that pattern in isolation: T = 1, m distinct experts per call (random, weights streamed from
DRAM), calls back to back or separated by a gap the main thread spends sleeping or spinning.
If calls after a gap are slower than back-to-back ones, the worker threads' wake-up is the
cost (OMP_WAIT_POLICY / GOMP_SPINCOUNT, or ggml's own pool's `poll`), not the DRAM.

    python benchmarks/cpu_call_gaps.py --threads 16 --json gaps.json
    OMP_WAIT_POLICY=active python benchmarks/cpu_call_gaps.py --threads 16

Not a unit test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_experts_bench import SHAPES, layer_bytes, random_layer  # noqa: E402
from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine  # noqa: E402


def wait(kind: str, seconds: float) -> None:
    if kind == "sleep":
        time.sleep(seconds)
    elif kind == "spin":
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


def measure(engine: CpuExpertEngine, layers: list, n_expert: int, n_embd: int, misses: int, gap: str,
            gap_s: float, calls: int, rng: np.random.Generator) -> float:
    """Mean seconds of one forward call (the gap itself excluded)."""
    x = rng.standard_normal((1, n_embd), dtype=np.float32)
    out = np.empty_like(x)
    w = np.full((1, misses), 1.0 / misses, np.float32)
    ids = [rng.choice(n_expert, misses, replace=False).astype(np.int32)[None, :] for _ in range(256)]
    for i in range(len(layers)):  # warm-up: graphs built, pages touched
        engine.forward(layers[i], x, ids[i % 256], w, out)
    total = 0.0
    for i in range(calls):
        wait(gap, gap_s)
        t0 = time.perf_counter()
        engine.forward(layers[i % len(layers)], x, ids[i % 256], w, out)
        total += time.perf_counter() - t0
    return total / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="qwen3", choices=sorted(SHAPES))
    p.add_argument("--threads", default="16", help="comma list")
    p.add_argument("--misses", default="1,2,3,8", help="comma list of experts per call")
    p.add_argument("--gap-us", type=float, default=400.0)
    p.add_argument("--stream-gb", type=float, default=3.0)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    s = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    qt = GGMLQuantizationType.Q4_0
    n_layers = max(2, int(args.stream_gb * 1e9 / layer_bytes(s, qt)))
    weights = [random_layer(rng, s, qt) for _ in range(n_layers)]
    expert_mb = layer_bytes(s, qt) / s.n_expert / 1e6
    env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND")}
    rows = []
    print(f"{args.shape}: {n_layers} layers, {expert_mb:.2f} MB per expert, env {env}")
    print(f"{'threads':>7} {'misses':>6} {'gap':>6} {'ms/call':>8} {'GB/s':>6}")
    for threads in (int(t) for t in args.threads.split(",")):
        with CpuExpertEngine(CpuExpertConfig(n_threads=threads)) as engine:
            layers = [engine.prepare(w) for w in weights]
            for misses in (int(m) for m in args.misses.split(",")):
                for gap in ("none", "sleep", "spin"):
                    sec = measure(engine, layers, s.n_expert, s.n_embd, misses, gap, args.gap_us * 1e-6,
                                  args.calls, rng)
                    gbps = misses * expert_mb / 1e3 / sec
                    rows.append({"threads": threads, "misses": misses, "gap": gap, "ms_per_call": sec * 1e3,
                                 "gb_per_s": gbps})
                    print(f"{threads:>7} {misses:>6} {gap:>6} {sec * 1e3:>8.3f} {gbps:>6.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "env": env, "gap_us": args.gap_us, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
