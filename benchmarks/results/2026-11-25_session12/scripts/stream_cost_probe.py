"""Host time of each piece of a decode step's streaming path (Qwen3 6 GiB plan), no profiler.

python3 scratch/stream_cost_probe.py MODEL
"""
import sys
import time

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

cfg = BenchConfig(model=sys.argv[1], vram_budget_gib=6.0, threads=16, prompt_tokens=512, gen_tokens=128)
plan, _ = _plan(cfg, None)
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads,
                                              cache=_cache(cfg, plan, torch.device("cuda")),
                                              prefill_chunk=plan.prefill_chunk))
gpu, store = model.gpu, model.gpu.store
cur = torch.cuda.current_stream()
N = 300
rng = np.random.default_rng(0)
il = 3
ptrs = gpu._host_ptrs[il]
acc = {}


def lap(name, t0):
    t = time.perf_counter()
    acc[name] = acc.get(name, 0.0) + t - t0
    return t


for rep in range(N + 20):
    if rep == 20:
        acc.clear()
    experts = rng.choice(128, 4, replace=False).tolist()
    t = time.perf_counter()
    s = torch.cuda.current_stream(gpu.device); t = lap("current_stream", t)
    slots = gpu._ring[:4] if rep % 2 else gpu._ring[16:20]
    src = [[(p + e * per, per) for p, per in ptrs] for e in experts]; t = lap("sources", t)
    for slot in slots:
        store._worker.done(store._ticket[slot])
    t = lap("worker.done x4", t)
    store._now_stream.wait_event(store._last_read[slots[0]]); t = lap("now.wait_event", t)
    d, sr, n = [], [], []
    for slot, parts in zip(slots, src):
        for dst, (a, b) in zip(store._part_ptrs[slot], parts):
            d.append(dst); sr.append(a); n.append(b)
    t = lap("lists", t)
    store._runtime_copy.h2d_many(d, sr, n, store._now_stream.cuda_stream); t = lap("h2d_many (12 copies)", t)
    store._now_done.record(store._now_stream); t = lap("event record", t)
    cur.wait_event(store._now_done); t = lap("stream wait_event", t)
    table = np.full((1, 8), -1, dtype=np.int64); table[0, :4] = slots; t = lap("table", t)
    pairs = np.zeros((5, 8), np.int64)
    gpu.pair_table(table, pairs); t = lap("pair_table", t)
    used = gpu.wait_hits(table); t = lap("wait_hits", t)
    gpu.mark_hits_read(used); t = lap("mark_hits_read", t)
    if rep % 8 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
for k, v in acc.items():
    print(f"{k:24s} {v / N * 1e6:7.1f} us")
print(f"{'total':24s} {sum(acc.values()) / N * 1e6:7.1f} us per layer of 4 streamed experts")
# the single-copy path for comparison
t = time.perf_counter()
for rep in range(N):
    for dst, a, b in zip(d, sr, n):
        store._runtime_copy.h2d(dst, a, b, store._now_stream.cuda_stream)
    if rep % 8 == 0:
        torch.cuda.synchronize()
print(f"12 single cudaMemcpyAsync: {(time.perf_counter() - t) / N * 1e6:.1f} us")
