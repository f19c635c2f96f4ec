"""A host layer's time by call, unprofiled, for the code on PYTHONPATH (old or new decode_graphs).

python3 scratch/hostgap2.py MODEL BUDGET_GIB TOKENS LABEL
Wraps DecodeGraphs._run (by segment kind), _sync, _host_layer, the GPU experts' lookup /
after_layer, ggml's compute, and whatever CPU entry point the code uses; prints ms per host layer.
"""
import sys
import time
from collections import defaultdict

import numpy as np
import torch

import edge_moe.cpu_experts as ce
import edge_moe.decode_graphs as dg
from edge_moe.bench import BenchConfig, _cache, _one_run, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget, n_tok, label = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import os
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=int(os.environ.get("THREADS", "16")), prompt_tokens=512, gen_tokens=n_tok)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
acc: dict[str, float] = defaultdict(float)
cnt: dict[str, int] = defaultdict(int)
inside = {"host": False}


def timed(name, fn, only_in_host=True):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            if inside["host"] or not only_in_host:
                acc[name] += time.perf_counter() - t
    return wrapper


D = dg.DecodeGraphs
orig_run = D._run


def run(self, key, segment):
    t = time.perf_counter()
    orig_run(self, key, segment)
    if inside["host"]:
        acc[f"run {key[0]}"] += time.perf_counter() - t


orig_host = D._host_layer


def host_layer(self, il, length, forced):
    inside["host"] = True
    t = time.perf_counter()
    orig_host(self, il, length, forced)
    acc["host layer (whole)"] += time.perf_counter() - t
    inside["host"] = False
    cnt["host"] += 1


D._run, D._host_layer = run, host_layer
D._sync = timed("sync", D._sync)
E = ce.CpuExpertEngine
if hasattr(E, "forward_token"):
    E.forward_token = timed("cpu entry (forward_token)", E.forward_token)
    E._compute = timed("  ggml compute", E._compute)
else:
    dg.forward_misses = timed("cpu entry (forward_misses)", dg.forward_misses)
gpu = model.gpu
gpu.lookup = timed("lookup", gpu.lookup)
gpu.after_layer = timed("after_layer", gpu.after_layer)
rng = np.random.default_rng(0)
prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
feed = rng.integers(0, model.cfg.n_vocab, n_tok).tolist()
_one_run(model, prompt, feed[:8], None, None)
for rep in range(2):
    acc.clear(); cnt.clear()
    r = _one_run(model, prompt, feed, None, None)
    n = r.decode_tokens
    hl = max(1, cnt["host"])
    print(f"== {label} rep {rep}: decode {r.decode_tps:.2f} tok/s ({1e3 / r.decode_tps:.2f} ms/token), {n} tokens, "
          f"{hl / n:.0f} host layers/token; CPU phase {r.decode_cpu_seconds / n * 1e3:.2f} ms/token; ms per host layer:")
    for k in sorted(acc):
        print(f"  {k:34s} {acc[k] / hl * 1e3:8.4f}")
    outside = acc["host layer (whole)"] - acc.get("cpu entry (forward_token)", acc.get("cpu entry (forward_misses)", 0))
    print(f"  {'host layer outside the CPU entry':34s} {outside / hl * 1e3:8.4f}")

# does the main thread run Python slower right after a ggml call (workers still spinning) than when idle?
if os.environ.get("PYSPEED", "1") == "1":
    layer = model.cpu_layers[-1]
    e = model.cfg.n_embd
    x = np.random.default_rng(1).standard_normal(e).astype(np.float32)
    out = np.zeros(e, np.float32)
    ids, w = list(range(model.cfg.n_expert_used)), [0.1] * model.cfg.n_expert_used

    def pyloop():
        t = time.perf_counter()
        acc2 = 0
        for i in range(400):
            acc2 += i * 3 % 7
        d = {"a": 1}
        for i in range(100):
            d["a"] = d.get("a", 0) + 1
        return time.perf_counter() - t
    after, idle, after_gpu = [], [], []
    fwd = getattr(model.cpu, "forward_token", None)
    for i in range(200):
        if fwd is not None:
            fwd(layer, x, ids, w, out)
        else:
            model.cpu.forward(layer, x[None], np.array([ids], np.int32), np.array([w], np.float32))
        after.append(pyloop())
        time.sleep(0.01)
        idle.append(pyloop())
    print(f"  python probe (~{np.median(idle) * 1e6:.1f} us idle): right after a ggml call median "
          f"{np.median(after) * 1e6:.1f} us, p90 {np.percentile(after, 90) * 1e6:.1f}; idle p90 {np.percentile(idle, 90) * 1e6:.1f}")
