"""All-GPU prefill, eager against prefill graphs, on one loaded model (the planner's plan at a budget).

    python3 prefill_graph_ab.py MODEL BUDGET_GIB

Per prompt length: walls of consecutive prompts from an empty context (each a fresh random
prompt), first eager (model.prefill_graphs detached), then with the graphs: the first prompt of a
shape runs eagerly and captures, the later ones replay. Then a 512-token prompt after 700 tokens of
context (another KV bucket), and a 1500-token prompt (3 chunks). Logits of the two paths compared.
"""
import sys
import time

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=8)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=4096, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
graphs = model.prefill_graphs
print("all resident:", model.gpu.all_resident(), "prefill graphs:", graphs is not None, flush=True)
rng = np.random.default_rng(0)


def timed(prompt, keep=0):
    model.reset(keep)
    torch.cuda.synchronize()
    t = time.perf_counter()
    logits = model.forward(prompt, last_only=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t, logits


for n in (512, 300, 100, 20):
    prompts = [rng.integers(0, model.cfg.n_vocab, n).tolist() for _ in range(5)]
    for label, g in (("eager", None), ("eager2", None), ("graphs", graphs)):  # eager2: eager's own run-to-run spread
        model.prefill_graphs = g
        walls, outs = [], []
        for p in prompts:
            w, lg = timed(p)
            walls.append(w)
            outs.append(lg)
        if label == "eager":
            ref = outs
        else:
            diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(outs, ref))
        extra = "" if label == "eager" else f"  max|dlogit|/max|logit| vs eager {diff:.1e}"
        if n == 512 and label == "eager2":
            print("argmax of the last logits agree eager/eager2:", sum(int(a.argmax() == b.argmax()) for a, b in zip(outs, ref)), "of 5")
        print(f"{n:4d} tokens {label:6s}: walls ms " + ", ".join(f"{w * 1e3:.1f}" for w in walls)
              + f"  tok/s of the last 3: {n / np.mean(walls[2:]):.0f}{extra}", flush=True)
ctx = rng.integers(0, model.cfg.n_vocab, 700).tolist()
for label, g in (("eager", None), ("graphs", graphs)):
    model.prefill_graphs = g
    walls = []
    for _ in range(4):
        model.reset(0)
        model.forward(ctx, last_only=True)
        w, _ = timed(rng.integers(0, model.cfg.n_vocab, 512).tolist(), keep=700)
        walls.append(w)
    print(f"512 after 700 {label:6s}: walls ms " + ", ".join(f"{w * 1e3:.1f}" for w in walls), flush=True)
    w = [timed(rng.integers(0, model.cfg.n_vocab, 1500).tolist())[0] for _ in range(3)]
    print(f"1500 tokens   {label:6s}: walls ms " + ", ".join(f"{x * 1e3:.1f}" for x in w)
          + f"  tok/s of the last 2: {1500 / np.mean(w[1:]):.0f}", flush=True)
print("graphs captured:", graphs.captures, "chunks run:", graphs.chunks, "graphs:", graphs.n_graphs)
print(f"GPU memory reserved {torch.cuda.memory_reserved() / 2**30:.2f} GiB, max allocated "
      f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
