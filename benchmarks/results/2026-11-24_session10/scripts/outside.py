"""Where a decode token's time goes outside the CPU expert calls (Qwen3 shape), unprofiled (no extra syncs).

python3 scratch/outside.py MODEL BUDGET_GIB
"""
import sys
import time
from collections import defaultdict

import numpy as np
import torch

import edge_moe.decode_graphs as dg
from edge_moe.bench import BenchConfig, _cache, _one_run, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=64)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
acc = defaultdict(float)
D = dg.DecodeGraphs
orig_layers, orig_resident, orig_run, orig_step = D._layers, D._token_resident, D._run, D.step
orig_host, orig_res_run = D._host_layer, D._resident_run
mark = {}


def step(self, token, forced):
    mark["t0"] = time.perf_counter()
    out = orig_step(self, token, forced)
    acc["step total"] += time.perf_counter() - mark["t0"]
    mark["t_end"] = time.perf_counter()
    return out


def layers(self, length, forced):
    t = time.perf_counter()
    acc["prologue (rope, mask, embed, begin_step)"] += t - mark["t0"]
    orig_layers(self, length, forced)
    mark["t_layers"] = time.perf_counter()
    acc["layers"] += mark["t_layers"] - t


def run(self, key, segment):
    t = time.perf_counter()
    orig_run(self, key, segment)
    if key[0] == "head":
        acc["head launch"] += time.perf_counter() - t


def host_layer(self, il, length, forced):
    t = time.perf_counter()
    orig_host(self, il, length, forced)
    acc["host layers"] += time.perf_counter() - t
    acc["n host layer steps"] += 1


def res_run(self, start, end, length, forced):
    t = time.perf_counter()
    orig_res_run(self, start, end, length, forced)
    acc["resident runs (launch, no sync)"] += time.perf_counter() - t


D.step, D._layers, D._run, D._host_layer, D._resident_run = step, layers, run, host_layer, res_run
rng = np.random.default_rng(0)
prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
feed = rng.integers(0, model.cfg.n_vocab, 64).tolist()
_one_run(model, prompt, feed[:8], None, None)
acc.clear()
tm0 = dict(model.timings.__dict__)
r = _one_run(model, prompt, feed, None, None)
n = r.decode_tokens
tm = {k: (v - tm0[k]) for k, v in model.timings.__dict__.items()}
print(f"decode {r.decode_tps:.2f} tok/s, {n} tokens; per token ms:")
for k, v in acc.items():
    print(f"  {k:45s} {v / n * 1e3 if not k.startswith('n ') else v / n:8.3f}")
print(f"  wall per token {1e3 / r.decode_tps:.3f} ms; CPU expert calls {r.decode_cpu_seconds / n * 1e3:.3f} ms "
      f"({r.decode_cpu_calls / n:.1f} calls)")
import os
if os.environ.get('OUTSIDE_PROFILE', '1') == '0':
    raise SystemExit(0)
# host time per torch op, and the GPU kernels, over 4 tokens after a fresh short prompt
from torch.profiler import ProfilerActivity, profile
model.reset(0)
model.forward(prompt[:64], last_only=True)
for t in feed[:4]:  # the graphs for this KV bucket exist after these
    int(torch.argmax(model.forward([t], last_only=True)[-1]))
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for t in feed[4:8]:
        int(torch.argmax(model.forward([t], last_only=True)[-1]))
ka = prof.key_averages()
print(ka.table(sort_by="self_cpu_time_total", row_limit=25))
for key in ("self_device_time_total", "self_cuda_time_total"):
    try:
        print(ka.table(sort_by=key, row_limit=40))
        break
    except Exception as e:  # older/newer torch names
        print("sort key", key, e)
