"""Decode tok/s at a VRAM budget with decode streaming forced to s of a layer's misses, the streamed experts
read in place over PCIe (zero copy) or copied to the ring first; one loaded model, the planner's plan otherwise.

    python3 zero_copy_ab.py MODEL BUDGET_GIB
"""
import dataclasses
import sys

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _one_run, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=64, gen_tokens=64)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=512, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
gpu = model.gpu
k = model.cfg.n_expert_used
print("plan rule:", cache.decode_stream, "ring:", len(gpu._ring), "page-locked layers:", len(gpu._host_ptrs), flush=True)
rng = np.random.default_rng(0)
prompt = rng.integers(0, model.cfg.n_vocab, 64).tolist()
feed = rng.integers(0, model.cfg.n_vocab, 64).tolist()
_one_run(model, prompt, feed[:8], None, None)  # warm-up
base = gpu.config
for zc in (True, False):
    for s in (0, 1, 2, 3, 4, 5, 6):
        if not zc and s not in (0, 2, 4):
            continue
        gpu._zero_copy = zc
        gpu.config = dataclasses.replace(base, decode_stream=tuple(min(m, s) for m in range(k + 1)))
        tps = []
        for _ in range(3):
            before = gpu.n_streamed_decode
            r = _one_run(model, prompt, feed, None, None)
            tps.append(r.decode_tps)
        print(f"{'zero-copy' if zc else 'copied   '} s={s}: decode {np.mean(tps):6.2f} ± {np.std(tps):.2f} tok/s "
              f"({', '.join(f'{t:.2f}' for t in tps)}), streamed a token {(gpu.n_streamed_decode - before) / len(feed):.1f}",
              flush=True)
gpu.config = base
model.close()
