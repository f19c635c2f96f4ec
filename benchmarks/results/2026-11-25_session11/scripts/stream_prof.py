"""Where a streamed prefill layer's time goes (Qwen3 12 GiB): host stamps around the stream ring.

python3 scratch/stream_prof.py MODEL BUDGET_GIB [--profile]
"""
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import torch

from edge_moe import gpu_experts as ge
from edge_moe import gpu_slots as gs
from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
T = defaultdict(float)
N = defaultdict(int)
lock = threading.Lock()


def timed(cls, name, key, sync=False):
    orig = getattr(cls, name)

    def wrap(*a, **k):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            if sync:
                torch.cuda.synchronize()
            with lock:
                T[key] += time.perf_counter() - t
                N[key] += 1
    setattr(cls, name, wrap)


timed(ge.GpuExperts, "_compute_streamed", "streamed_layer(sync)", sync=True)
timed(gs.SlotStore, "fill_many", "fill_many(host)")
timed(gs.SlotStore, "wait_filled", "wait_filled(host)")
timed(gs.SlotStore, "_fill_small_through_staging", "worker_job")
timed(ge.GpuExperts, "_compute_triton", "compute_triton(host)")
timed(ge.GpuExperts, "_compute_grouped", "compute_grouped(host)")
orig_sync = torch.cuda.Event.synchronize
from edge_moe import host_copy as hc  # noqa: E402
timed(hc.CopyPool, "wait", "pool.wait(worker)")
timed(hc.CopyPool, "start", "pool.start(worker)")

cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=8)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
t_build = time.perf_counter()
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
reg = model.gpu._registered
print(f"built in {time.perf_counter() - t_build:.1f} s, registered {0 if reg is None else reg.nbytes / 2**30:.2f} GiB")
print("stream_min_tokens", model.gpu.stream_min_tokens, "ring", len(model.gpu._ring), "staging",
      len(model.gpu.store._staging), "copy threads", model.gpu.store._pool.n_threads)
rng = np.random.default_rng(0)
for rep in range(3):
    T.clear()
    N.clear()
    prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
    model.reset(0)
    n0 = model.gpu.n_streamed
    t = time.perf_counter()
    model.forward(prompt, last_only=True)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    print(f"rep {rep}: prefill {wall * 1e3:.0f} ms ({512 / wall:.0f} tok/s), streamed experts "
          f"{model.gpu.n_streamed - n0}")
    for k in sorted(T):
        print(f"   {k:28s} {T[k] * 1e3:9.1f} ms  n={N[k]}")
if "--profile" in sys.argv:
    from torch.profiler import ProfilerActivity, profile
    prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
    model.reset(0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        model.forward(prompt, last_only=True)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
