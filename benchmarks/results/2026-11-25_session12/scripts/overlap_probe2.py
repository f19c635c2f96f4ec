"""Host->GPU DMAs from pinned memory issued (ctypes cudaMemcpyAsync) before ggml's CPU expert call on the
same thread: does the DMA slow the CPU path, and the CPU the DMA?

python3 scratch/overlap_probe2.py MODEL
"""
import ctypes
import sys
import time

import numpy as np
import torch

from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine
from edge_moe.expert_weights import expert_weights_from_gguf
from edge_moe.gguf_file import GGUFFile

torch.cuda.init()
_ = torch.zeros(1, device="cuda")
lib = None
for line in open("/proc/self/maps"):
    if "libcudart" in line:
        lib = line.split()[-1]
        break
print("cudart", lib)
cudart = ctypes.CDLL(lib)
cudart.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
cudart.cudaMemcpyAsync.restype = ctypes.c_int

g = GGUFFile(sys.argv[1])
eng = CpuExpertEngine(CpuExpertConfig(n_threads=16))
layers = [eng.prepare(expert_weights_from_gguf(g, il), repack=True) for il in range(8)]
E, n_exp = layers[0].n_embd, layers[0].n_expert
rng = np.random.default_rng(0)
x = rng.standard_normal(E).astype(np.float32)
out = np.zeros(E, np.float32)
GB = 1 << 30
pinned = torch.empty(2 * GB, dtype=torch.uint8, pin_memory=True)
pinned.numpy()[:] = 1
base = pinned.data_ptr()
dev = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
dbase = dev.data_ptr()
side = torch.cuda.Stream()
sh = side.cuda_stream
part = 884736
off = [0]


def issue(n_experts):
    for e in range(n_experts):
        for p in range(3):
            src = base + off[0]
            off[0] = (off[0] + part) % (2 * GB - part)
            rc = cudart.cudaMemcpyAsync(dbase + ((e * 3 + p) * part), src, part, 1, sh)
            assert rc == 0, rc


def cpu(k, i):
    ids = rng.choice(n_exp, k, replace=False).tolist()
    eng.forward_token(layers[i % 8], x, ids, [1.0 / k] * k, out)


for s, k in ((4, 4), (3, 5), (2, 6), (1, 7), (8, 0), (0, 8)):
    n = 200
    for i in range(20):
        if k: cpu(k, i)
    # alone
    t = time.perf_counter()
    for i in range(n):
        if k: cpu(k, i)
    cpu_alone = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        issue(s); side.synchronize()
    dma_alone = (time.perf_counter() - t) / n
    # both: DMAs issued first, then the CPU call, then wait for the DMAs
    t_issue = t_cpu = 0.0
    t = time.perf_counter()
    for i in range(n):
        a = time.perf_counter(); issue(s); b = time.perf_counter()
        if k: cpu(k, i)
        c = time.perf_counter(); side.synchronize()
        t_issue += b - a; t_cpu += c - b
    both = (time.perf_counter() - t) / n
    print(f"stream {s} / cpu {k}: CPU alone {cpu_alone*1e6:.0f} us, DMA alone {dma_alone*1e6:.0f} us "
          f"({s*3*part/max(dma_alone,1e-9)/1e9:.1f} GB/s); together {both*1e6:.0f} us "
          f"(issue {t_issue/n*1e6:.0f}, CPU call {t_cpu/n*1e6:.0f}); serial would be {(cpu_alone+dma_alone)*1e6:.0f}")
