"""Prefill tok/s of a 512-token prompt (3 timed after a warm-up) for the code on PYTHONPATH.

python3 scratch/prefill_ab.py MODEL BUDGET_GIB LABEL
"""
import sys
import time

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget, label = sys.argv[1], float(sys.argv[2]), sys.argv[3]
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=8)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
rng = np.random.default_rng(0)
times = []
for rep in range(4):
    prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
    model.reset(0)
    t = time.perf_counter()
    logits = model.forward(prompt, last_only=True)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
tps = [512 / s for s in times[1:]]
print(f"{label}: budget {budget} GiB prefill {np.mean(tps):.0f} tok/s ({', '.join(f'{v:.0f}' for v in tps)})")
