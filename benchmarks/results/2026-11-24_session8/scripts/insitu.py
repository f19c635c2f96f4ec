"""In-situ CPU expert calls vs the same calls replayed back to back (and with gaps).

python3 scratch/insitu.py MODEL BUDGET_GIB   (env THREADS, TOKENS)
"""
import os
import statistics
import sys
import time

import numpy as np
import torch

import edge_moe.decode_graphs as dg
from edge_moe.bench import BenchConfig, _cache, _one_run, _plan
from edge_moe.cpu_experts import forward_misses as fm_orig
from edge_moe.executor import ExecutorConfig, HybridModel

model_path, budget = sys.argv[1], float(sys.argv[2])
if os.environ.get("TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["TORCH_THREADS"]))
threads = int(os.environ.get("THREADS", "16"))
tokens = int(os.environ.get("TOKENS", "48"))
tag = os.environ.get("TAG", "")
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=threads, prompt_tokens=512, gen_tokens=tokens)
plan, _ = _plan(cfg, None)
DEV = os.environ.get("DEVICE", "cuda")
cache = _cache(cfg, plan, torch.device(DEV))
t = time.perf_counter()
model = HybridModel(cfg.model, ExecutorConfig(device=DEV, decode_graphs="on" if DEV == "cuda" else "uncaptured", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
print(f"[{tag}] load {time.perf_counter() - t:.1f}s threads {plan.threads} dram_gbps {plan.dram_gbps:.1f} "
      f"expert {plan.expert_bytes / 2**20:.2f} MiB repacked {len(model.repacked_layers)} layers "
      f"omp={os.environ.get('OMP_WAIT_POLICY', '-')}/{os.environ.get('GOMP_SPINCOUNT', '-')} torch threads {torch.get_num_threads()}", flush=True)
def _thp() -> str:
    rows = [l.split() for l in open("/proc/self/smaps_rollup") if l.startswith(("Rss:", "AnonHugePages:", "Anonymous:"))]
    return " ".join(f"{r[0]}{int(r[1]) // 1024}M" for r in rows)


print(f"[{tag}] memory {_thp()}", flush=True)
EB = plan.expert_bytes
rec: list = []
on = [False]


def timed(engine, layer, x, ids, w, hit, out=None):
    t0 = time.perf_counter()
    r = fm_orig(engine, layer, x, ids, w, hit, out=out)
    if on[0]:
        rec.append((time.perf_counter() - t0, layer, x.copy(), ids.copy(), w.copy(), hit.copy(), int((~hit).sum())))
    return r


dg.forward_misses = timed
rng = np.random.default_rng(0)
prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
feed = rng.integers(0, model.cfg.n_vocab, tokens).tolist()
_one_run(model, prompt, feed[:4], None, None)
on[0] = True
r = _one_run(model, prompt, feed, None, None)
on[0] = False
tok_ms = r.decode_seconds * 1e3 / r.decode_tokens
calls = [c for c in rec if c[6] > 0]
n_calls = len(calls) / max(1, r.decode_tokens + 0)


def gbps(ts, cs):
    return sum(c[6] for c in cs) * EB / sum(ts) / 1e9


ins = [c[0] for c in calls]
print(f"[{tag}] decode {1e3 / tok_ms:.2f} tok/s, {tok_ms:.2f} ms/token; CPU calls/token {n_calls:.1f}, "
      f"in-situ CPU ms/token {1e3 * sum(ins) / r.decode_tokens:.2f}, median call {1e3 * statistics.median(ins):.3f} ms, "
      f"{gbps(ins, calls):.1f} GB/s", flush=True)
out = np.zeros((1, model.cfg.n_embd), np.float32)
eng = model.cpu


def replay(gap_kind: str, gap_s: float) -> list[float]:
    ts = []
    dev_sleep = int(gap_s * 1.7e9)
    for c in calls:
        t0 = time.perf_counter()
        fm_orig(eng, c[1], c[2], c[3], c[4], c[5], out=out)
        ts.append(time.perf_counter() - t0)
        if gap_kind == "spin":
            end = time.perf_counter() + gap_s
            while time.perf_counter() < end:
                pass
        elif gap_kind == "sleep":
            time.sleep(gap_s)
        elif gap_kind == "cuda":
            if DEV == "cuda":
                torch.cuda._sleep(dev_sleep)
                torch.cuda.synchronize()
    return ts


for kind, gap in (("none", 0), ("spin", 3e-4), ("sleep", 3e-4), ("cuda", 3e-4), ("spin", 1e-3), ("sleep", 2e-3),
                  ("none", 0)):
    ts = replay(kind, gap)
    print(f"[{tag}] replay gap {kind:5s} {gap * 1e6:6.0f} us: median call {1e3 * statistics.median(ts):.3f} ms, "
          f"{gbps(ts, calls):.1f} GB/s", flush=True)
model.close()
