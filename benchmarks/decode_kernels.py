"""Which CUDA kernels one decode token runs, how many of each and how long (torch.profiler).

    python -m benchmarks.decode_kernels -m MODEL.gguf --vram-budget 24 [--prompt 512] [--tokens 2]

Builds the model as `edge-moe bench` does (the planner's cache for the budget), prefills a
random prompt, decodes a few warm-up tokens (graphs captured, cache warm), then profiles
`--tokens` decode steps: kernels grouped by name with count and GPU time per token, the
token's wall time and the sum of kernel times (their difference is launch gaps and host time).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--vram-budget", type=float, required=True, help="GiB, as edge-moe bench")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--tokens", type=int, default=2)
    p.add_argument("-t", "--threads", type=int, default=16)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()

    cfg = BenchConfig(model=args.model, vram_budget_gib=args.vram_budget, threads=args.threads)
    plan, _ = _plan(cfg, None)
    device = torch.device("cuda")
    model = HybridModel(args.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=args.threads,
                                                   cache=_cache(cfg, plan, device)))
    rng = np.random.default_rng(0)
    model.forward(rng.integers(0, model.cfg.n_vocab, args.prompt).tolist())
    feed = rng.integers(0, model.cfg.n_vocab, args.warmup + args.tokens).tolist()
    for t in feed[:args.warmup]:
        model.forward([t])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for t in feed[args.warmup:]:
            model.forward([t])
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.tokens
    kernels: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type.name == "CUDA":
            kernels[e.name[:90]].append(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total)
    n = args.tokens
    total = sum(sum(v) for v in kernels.values()) / n / 1e3
    count = sum(len(v) for v in kernels.values()) / n
    resident = model.decode_graphs is not None and model.decode_graphs.resident
    print(f"plan: {plan.cache.n_sets if plan.cache else 0} sets x {plan.cache.n_ways if plan.cache else 0} ways; "
          f"resident one-graph tokens: {resident}; graphs: {model.decode_graphs.n_graphs if model.decode_graphs else 0}")
    print(f"per token: wall {wall * 1e3:.2f} ms (profiled), {count:.0f} GPU kernels/copies, "
          f"their GPU time {total:.2f} ms")
    print("| kernel | per token | us per token | us each |\n|---|---:|---:|---:|")
    for name, times in sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:args.top]:
        print(f"| {name} | {len(times) / n:.0f} | {sum(times) / n:.0f} | {np.mean(times):.1f} |")
    model.close()


if __name__ == "__main__":
    main()
