"""All-GPU prefill of 512 tokens: wall, GPU kernel time and what the host waits on (torch.profiler).

python3 scratch/prefill_prof.py MODEL BUDGET_GIB
"""
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=8)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
print("registered:", model.gpu._registered is not None, "all resident:", model.gpu.all_resident())
rng = np.random.default_rng(0)
walls = []
for rep in range(5):
    prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
    model.reset(0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.forward(prompt, last_only=True)
    torch.cuda.synchronize()
    walls.append(time.perf_counter() - t)
print("prefill walls ms:", ", ".join(f"{w * 1e3:.1f}" for w in walls), " tok/s of the last 4:",
      f"{512 / np.mean(walls[1:]):.0f}")
prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
model.reset(0)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    t = time.perf_counter()
    model.forward(prompt, last_only=True)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
events = p.key_averages()
gpu = sum(e.self_device_time_total for e in events) / 1e3
print(f"profiled wall {wall * 1e3:.1f} ms, GPU kernel+copy time {gpu:.1f} ms")
print(events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
