"""Where a partly offloaded decode token's host time goes (no profiler syncs): StepTimings deltas over
128 tokens, then micro-timings of the pieces of one host layer.

python3 scratch/decode_diag.py MODEL BUDGET_GIB LABEL
"""
import os
import sys
import time

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, label = sys.argv[1], sys.argv[3]
threads = int(os.environ.get("THREADS", "16"))
kw = dict(gpu_budget_gib=float(sys.argv[2][1:])) if sys.argv[2].startswith("g") else dict(vram_budget_gib=float(sys.argv[2]))
cfg = BenchConfig(model=model_path, threads=threads, prompt_tokens=512, gen_tokens=128, **kw)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
print(label, "plan: decode_stream", plan.decode_stream, "predicted", round(plan.predicted_decode_tps, 2),
      "repacked", len(model.repacked_layers))
rng = np.random.default_rng(0)
for rep in range(int(os.environ.get("REPS", "3"))):
    prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
    model.reset(0)
    logits = model.forward(prompt, last_only=True)
    tok = int(torch.argmax(logits[-1]))
    torch.cuda.synchronize()
    before = dict(model.timings.as_dict()); cb = model.decode_cpu.copy(); calls0 = model.timings.cpu_calls
    t = time.perf_counter()
    for _ in range(128):
        logits = model.forward([tok], last_only=True)
        tok = int(torch.argmax(logits[-1]))
    wall = (time.perf_counter() - t) / 128 * 1e3
    d = {k: (v - before[k]) / 128 * 1e3 for k, v in model.timings.as_dict().items()}
    calls = (model.timings.cpu_calls - calls0) / 128
    rest = wall - sum(d.values())
    print(f"{label} rep{rep}: token {wall:.2f} ms ({1e3 / wall:.1f} tok/s) | " +
          " ".join(f"{k} {v:.2f}" for k, v in d.items()) + f" | rest {rest:.2f} | cpu calls {calls:.0f} | streamed "
          f"{model.gpu.n_streamed_decode}")

if os.environ.get("DIAG_MICRO", "0") != "1":
    sys.exit(0)
# micro: one host layer's pieces
dg = model.decode_graphs
host = [il for il in range(model.cfg.n_layer) if not model.gpu.layer_resident(il)]
il = host[len(host) // 2]
fronts = [k for k in dg._graphs if k[0] == "front" and k[1] == il]
print("host layers", len(host), "front keys", fronts[:2])
if fronts:
    g = dg._graphs[fronts[0]]
    for _ in range(50):
        g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(500):
        g.replay(); torch.cuda.synchronize()
    print(f"front replay+sync {((time.perf_counter() - t) / 500) * 1e6:.1f} us")
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(200):
        g.replay()
    ev1.record(); torch.cuda.synchronize()
    print(f"front GPU time (back to back) {ev0.elapsed_time(ev1) / 200 * 1e3:.1f} us")
    t = time.perf_counter()
    for _ in range(500):
        torch.cuda.synchronize()
    print(f"idle sync {((time.perf_counter() - t) / 500) * 1e6:.1f} us")
layer = model.cpu_layers[il]
x = rng.standard_normal(model.cfg.n_embd).astype(np.float32)
out = np.zeros(model.cfg.n_embd, np.float32)
for name, lay in (("host layer (as run)", layer),):
    for k in (8, 1):
        ids_sets = [rng.choice(model.cfg.n_expert, k, replace=False).tolist() for _ in range(64)]
        for i in range(20):
            model.cpu.forward_token(lay, x, ids_sets[i % 64], [1.0 / k] * k, out)
        t = time.perf_counter()
        n = 400
        for i in range(n):
            model.cpu.forward_token(lay, x, ids_sets[i % 64], [1.0 / k] * k, out)
        us = (time.perf_counter() - t) / n * 1e6
        print(f"forward_token {name} k={k}: {us:.1f} us/call back to back (L2-hot experts repeat every 64 calls)")
# all host layers in turn, like a token, CPU only
ids_all = [[rng.choice(model.cfg.n_expert, model.cfg.n_expert_used, replace=False).tolist() for _ in host] for _ in range(16)]
w = [1.0 / model.cfg.n_expert_used] * model.cfg.n_expert_used
t = time.perf_counter()
for r in range(16):
    for j, h in enumerate(host):
        model.cpu.forward_token(model.cpu_layers[h], x, ids_all[r][j], w, out)
ms = (time.perf_counter() - t) / 16 * 1e3
print(f"CPU only, {len(host)} host layers per token: {ms:.2f} ms/token ({ms / len(host) * 1e3:.0f} us/layer)")
