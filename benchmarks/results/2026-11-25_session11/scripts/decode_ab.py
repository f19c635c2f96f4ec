"""Decode tok/s (128 tokens after a 512-token prompt, 3 timed runs after a warm-up) for the code and env given.

python3 scratch/decode_ab.py MODEL BUDGET_GIB LABEL
"""
import sys
import time

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget, label = sys.argv[1], float(sys.argv[2]), sys.argv[3]
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=128)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
rng = np.random.default_rng(0)
rates = []
for rep in range(4):
    prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
    model.reset(0)
    logits = model.forward(prompt, last_only=True)
    tok = int(torch.argmax(logits[-1]))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(128):
        logits = model.forward([tok], last_only=True)
        tok = int(torch.argmax(logits[-1]))
    rates.append(128 / (time.perf_counter() - t))
r = rates[1:]
print(f"{label}: budget {budget} GiB decode {np.mean(r):.1f} tok/s ({', '.join(f'{v:.1f}' for v in r)})")
