"""All-GPU decode token: kernel list (uncaptured graphs loop under torch.profiler) and captured tok/s.

python3 scratch/decode_prof.py MODEL BUDGET_GIB
"""
import collections
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=128)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
rng = np.random.default_rng(0)
import os
modes = os.environ.get("MODES", "on,uncaptured").split(",")
for mode in modes:
    model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                                  prefill_chunk=plan.prefill_chunk, decode_graphs=mode))
    for _ in range(2):
        model.reset(0)
        model.forward(rng.integers(0, model.cfg.n_vocab, 512).tolist(), last_only=True)
    print(mode, "all resident:", model.gpu.all_resident())
    toks = rng.integers(0, model.cfg.n_vocab, 80).tolist()
    for t in toks[:16]:
        model.forward([t], last_only=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in toks[16:]:
        model.forward([t], last_only=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / 64
    print(f"{mode}: {dt * 1e3:.3f} ms a token, {1 / dt:.1f} tok/s")
    if mode == "uncaptured":
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for t in toks[:4]:
                model.forward([t], last_only=True)
            torch.cuda.synchronize()
        stats = collections.defaultdict(lambda: [0, 0.0])
        for e in p.events():
            if e.device_type.name == "CUDA":
                s = stats[e.name[:90]]
                s[0] += 1
                s[1] += e.device_time
        n_layer = model.cfg.n_layer
        total = sum(v[1] for v in stats.values()) / 4
        print(f"kernels a token: {sum(v[0] for v in stats.values()) / 4:.0f}, {total:.0f} us of kernel time "
              f"({total / n_layer:.1f} us a layer)")
        seq = [e for e in p.events() if e.device_type.name == "CUDA"]
        per = len(seq) // 4
        first = seq[per + 40: per + 40 + 40]  # second token, from its 40th kernel on
        for e in first:
            print(f"   seq {e.device_time:7.2f} us  {e.name[:70]}")
        for name, (n, us) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
            print(f"{n / 4 / n_layer:6.2f}/layer {us / 4 / n_layer:7.2f} us/layer {us / n / 1:7.2f} us each  {name}")
    model.close()
    del model
    torch.cuda.empty_cache()
