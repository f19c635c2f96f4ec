"""Does a host->GPU DMA from pinned memory slow ggml's CPU expert path (DRAM shared)? Times
forward_token (k experts, repacked or not) alone, the DMAs alone, and both at once.

python3 scratch/overlap_probe.py MODEL
"""
import sys
import threading
import time

import numpy as np
import torch

from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine
from edge_moe.gguf_file import GGUFFile
from edge_moe.expert_weights import expert_weights_from_gguf  # noqa

path = sys.argv[1]
g = GGUFFile(path)
eng = CpuExpertEngine(CpuExpertConfig(n_threads=16))
layers = [eng.prepare(expert_weights_from_gguf(g, il), repack=True) for il in range(8)]
E = layers[0].n_embd
n_exp = layers[0].n_expert
rng = np.random.default_rng(0)
x = rng.standard_normal(E).astype(np.float32)
out = np.zeros(E, np.float32)
pinned = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
pinned.numpy()[:] = 1
dev = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
side = torch.cuda.Stream()
chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 2654208


def cpu_round(k, n=200):
    t = time.perf_counter()
    for i in range(n):
        ids = rng.choice(n_exp, k, replace=False).tolist()
        eng.forward_token(layers[i % 8], x, ids, [1.0 / k] * k, out)
    return (time.perf_counter() - t) / n


stop = threading.Event()
moved = [0, 0.0]


def dma_loop():
    off = 0
    t = time.perf_counter()
    with torch.cuda.stream(side):
        while not stop.is_set():
            for _ in range(8):
                src = pinned[off:off + chunk]
                dev[:chunk].copy_(src, non_blocking=True)
                off = (off + chunk) % ((1 << 30) - chunk)
                moved[0] += chunk
            side.synchronize()
    moved[1] = time.perf_counter() - t


for k in (8, 4, 2):
    cpu_round(k, 30)
    alone = cpu_round(k)
    stop.clear(); moved[:] = [0, 0.0]
    th = threading.Thread(target=dma_loop); th.start()
    time.sleep(0.05)
    both = cpu_round(k)
    stop.set(); th.join()
    gbps_both = moved[0] / moved[1] / 1e9
    stop.clear(); moved[:] = [0, 0.0]
    th = threading.Thread(target=dma_loop); th.start(); time.sleep(0.3); stop.set(); th.join()
    gbps_alone = moved[0] / moved[1] / 1e9
    bytes_k = k * chunk
    print(f"k={k}: CPU call alone {alone*1e6:.0f} us ({bytes_k/alone/1e9:.1f} GB/s), with DMA {both*1e6:.0f} us "
          f"({bytes_k/both/1e9:.1f} GB/s); DMA alone {gbps_alone:.1f} GB/s, during CPU {gbps_both:.1f} GB/s")
# issue cost of one 3-part expert copy on the main thread
parts = [pinned[i * 884736:(i + 1) * 884736] for i in range(3)]
dsts = [dev[i * 884736:(i + 1) * 884736] for i in range(3)]
torch.cuda.synchronize()
t = time.perf_counter()
for r in range(200):
    with torch.cuda.stream(side):
        for d, s in zip(dsts, parts):
            d.copy_(s, non_blocking=True)
issue = (time.perf_counter() - t) / 200
torch.cuda.synchronize()
print(f"issue of 3 copies (one expert) {issue*1e6:.1f} us host")
