"""Where a host layer's time goes outside ggml's compute, stage by stage, unprofiled.

python3 scratch/hostgap.py MODEL BUDGET_GIB [TOKENS]
Pass 1: perf_counter stamps inside an instrumented copy of DecodeGraphs._host_layer and
CpuExpertEngine.forward. Pass 2: CUDA events around the front graph (its GPU time).
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

model_path, budget = sys.argv[1], float(sys.argv[2])
n_tok = int(sys.argv[3]) if len(sys.argv) > 3 else 48
cfg = BenchConfig(model=model_path, vram_budget_gib=budget, threads=16, prompt_tokens=512, gen_tokens=n_tok)
plan, _ = _plan(cfg, None)
cache = _cache(cfg, plan, torch.device("cuda"))
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads, cache=cache,
                                              prefill_chunk=plan.prefill_chunk))
acc: dict[str, float] = defaultdict(float)
cnt: dict[str, int] = defaultdict(int)
last = {"end": None}
MODE = {"events": False}
evs: list = []

orig_forward = ce.CpuExpertEngine.forward


def forward(self, layer, x, expert_ids, expert_weights, out=None):
    t0 = time.perf_counter()
    x, ids, w = ce.validate_routing(x, expert_ids, expert_weights, layer.n_embd, layer.n_expert)
    t1 = time.perf_counter()
    with self._lock:
        graph = self._graph(layer, ids.shape[0], ids.shape[1])
        graph.bind(layer)
        np.copyto(graph.x, x)
        np.copyto(graph.ids, ids)
        np.copyto(graph.w, w)
        graph.plan.work_data = self._work_ptr
        t2 = time.perf_counter()
        status = self._libs.cpu.ggml_graph_compute(graph.cgraph, graph.plan_ref)
        t3 = time.perf_counter()
        assert status == 0
        np.copyto(out, graph.y)
    t4 = time.perf_counter()
    for k, v in (("f.validate", t1 - t0), ("f.bind+copy in", t2 - t1), ("f.ggml_graph_compute", t3 - t2),
                 ("f.copy out", t4 - t3)):
        acc[k] += v
    return out


def host_layer(self, il, length, forced):
    m = self.m
    gpu, tm = m.gpu, m.timings
    c = self._cols
    s = [time.perf_counter()]
    if last["end"] is not None:
        acc["0 gap since previous host layer end"] += s[0] - last["end"]
    routed = self.routed_host.numpy()
    w, h_np = routed[:, c[1]:c[2]], routed[:, c[3]:c[4]]
    if MODE["events"]:
        e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
    self._run(("front", il, length, forced), lambda: self._front(il, length, forced))
    if MODE["events"]:
        e1.record(); evs.append((e0, e1))
    s.append(time.perf_counter())  # 1 front launched
    self._sync()
    s.append(time.perf_counter())  # 2 synced
    ids = routed[:, :c[1]].astype(np.int32)
    slots = gpu.lookup(il, ids)
    hit = slots >= 0
    s.append(time.perf_counter())  # 3 lookup
    used = None
    run_experts = bool(hit.any()) or m.dense.layers[il].shexp_gate is not None
    if run_experts and gpu.cache is not None:
        gpu.pair_table(slots, self.pairs_host.numpy())
        self.pairs.copy_(self.pairs_host, non_blocking=True)
        used = gpu.wait_hits(slots)
    if run_experts:
        self._run(("experts", il), lambda: self._experts(il))
    else:
        self.y_gpu.zero_()
    if used is not None:
        gpu.mark_hits_read(used)
    s.append(time.perf_counter())  # 4 experts / zero
    n_miss = hit.size - int(np.count_nonzero(hit))
    if not n_miss:
        self.y_cpu.zero_()
        s.append(time.perf_counter()); s.append(s[-1])
    else:
        ce.forward_misses(m.cpu, m.cpu_layers[il], np.ascontiguousarray(h_np), ids, w, hit, out=self.y_cpu_host.numpy())
        s.append(time.perf_counter())  # 5 cpu done
        self.y_cpu.copy_(self.y_cpu_host, non_blocking=True)
        tm.cpu_calls += 1
        s.append(time.perf_counter())  # 6 copy issued
    m.decode_cpu.add(il, s[5] - s[4], n_miss)
    gpu.after_layer(il, ids, slots)
    s.append(time.perf_counter())  # 7 after_layer
    last["end"] = s[-1]
    names = ["1 front launch", "2 sync wait", "3 ids+lookup", "4 experts graph / y_gpu zero",
             "5 forward_misses (whole)", "6 y_cpu H2D issue", "7 counters + after_layer"]
    for i, n in enumerate(names):
        acc[n] += s[i + 1] - s[i]
    cnt["host layers"] += 1


def step_wrap(orig):
    def step(self, token, forced):
        last["end"] = None
        t = time.perf_counter()
        out = orig(self, token, forced)
        acc["step total"] += time.perf_counter() - t
        return out
    return step


ce.CpuExpertEngine.forward = forward
dg.DecodeGraphs._host_layer = host_layer
dg.DecodeGraphs.step = step_wrap(dg.DecodeGraphs.step)
rng = np.random.default_rng(0)
prompt = rng.integers(0, model.cfg.n_vocab, 512).tolist()
feed = rng.integers(0, model.cfg.n_vocab, n_tok).tolist()
_one_run(model, prompt, feed[:8], None, None)
for events in (False, True):
    acc.clear(); cnt.clear(); evs.clear()
    MODE["events"] = events
    r = _one_run(model, prompt, feed, None, None)
    n = r.decode_tokens
    nl = cnt["host layers"] / max(1, n) if n else 0
    print(f"\n== events={events}: decode {r.decode_tps:.2f} tok/s over {n} tokens, {nl:.0f} host layers/token;"
          f" ms per host layer (per token):")
    for k in sorted(acc):
        per_layer = acc[k] / max(1, cnt["host layers"]) * 1e3
        print(f"  {k:40s} {per_layer:8.4f}  ({acc[k] / max(1, n) * 1e3:8.3f})")
    if events:
        torch.cuda.synchronize()
        gpu_ms = [a.elapsed_time(b) for a, b in evs]
        print(f"  front graph GPU time per host layer: median {np.median(gpu_ms):.4f} ms, mean {np.mean(gpu_ms):.4f}, "
              f"p90 {np.percentile(gpu_ms, 90):.4f}")
