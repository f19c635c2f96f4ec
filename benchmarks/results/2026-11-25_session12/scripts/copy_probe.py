"""Are copies from the page-locked (cudaHostRegister) GGUF map asynchronous for the host? Host time of
fill_now / torch copy_ / ctypes copies from (a) the registered views, (b) a torch pinned buffer.

python3 scratch/copy_probe.py MODEL
"""
import ctypes
import sys
import time

import numpy as np
import torch

from edge_moe.bench import BenchConfig, _cache, _plan
from edge_moe.cuda_memcpy import load
from edge_moe.executor import ExecutorConfig, HybridModel

cfg = BenchConfig(model=sys.argv[1], vram_budget_gib=6.0, threads=16, prompt_tokens=512, gen_tokens=128)
plan, _ = _plan(cfg, None)
model = HybridModel(cfg.model, ExecutorConfig(device="cuda", n_ctx=cfg.n_ctx, n_threads=plan.threads,
                                              cache=_cache(cfg, plan, torch.device("cuda")),
                                              prefill_chunk=plan.prefill_chunk))
gpu = model.gpu
store = gpu.store
print("registered", gpu._registered is not None, "layers with views", len(gpu._host_views), "ring", len(gpu._ring),
      "runtime copy", store._runtime_copy is not None)
parts = gpu._expert_parts(0, 5)
print("part types", [type(p).__name__ for p in parts], "pinned", [bool(p.is_pinned()) for p in parts],
      "bytes", [p.numel() for p in parts], "ptr % 4096", [p.data_ptr() % 4096 for p in parts])


class Attr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("device", ctypes.c_int), ("devicePointer", ctypes.c_void_p),
                ("hostPointer", ctypes.c_void_p)]


lib = [l.split()[-1] for l in open("/proc/self/maps") if "libcudart" in l][0]
cudart = ctypes.CDLL(lib)
a = Attr()
rc = cudart.cudaPointerGetAttributes(ctypes.byref(a), ctypes.c_void_p(parts[0].data_ptr()))
print("cudaPointerGetAttributes rc", rc, "type", a.type, "(1 = host registered/pinned)", "hostPtr", a.hostPointer)
ring = gpu._ring[:4]


def timed(label, fn, n=40):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    host = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    total = (time.perf_counter() - t) / n
    print(f"{label}: host {host * 1e6:.0f} us per expert, with the copies done {total * 1e6:.0f} us")


timed("fill_now from registered views", lambda i: store.fill_now(ring[i % 4], gpu._expert_parts(i % 30, i % 100)))
pinned = [torch.empty(p.numel(), dtype=torch.uint8, pin_memory=True) for p in parts]
timed("fill_now from torch pinned", lambda i: store.fill_now(ring[i % 4], pinned))
side = torch.cuda.Stream()


def torch_copy(i):
    with torch.cuda.stream(side):
        for d, s in zip(store.parts(ring[i % 4]), gpu._expert_parts(i % 30, i % 100)):
            d[:s.numel()].copy_(s, non_blocking=True)


timed("torch copy_ from registered views", torch_copy)
np_parts = [np.asarray(p.numpy()) for p in parts]
