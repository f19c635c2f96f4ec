"""ggml expert reads on 4 KiB vs 2 MiB pages: zero-copy arrays and repacked copies, per shape."""
import mmap
import sys

import numpy as np

import edge_moe.cpu_experts as ce
import edge_moe.microbench as mb

orig_tensor = mb._q4_0_tensor


def huge_tensor(rng, n_blocks):
    a = orig_tensor(rng, n_blocks)
    m = mmap.mmap(-1, a.nbytes + (2 << 20))
    m.madvise(mmap.MADV_HUGEPAGE)
    out = np.frombuffer(m, np.uint8)[:a.nbytes]
    out[:] = a
    return out


def anon_huge():
    return [l.split()[1] for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")][0]


class Repack(ce.CpuExpertConfig):
    def __init__(self, n_threads):
        super().__init__(n_threads=n_threads, repack=True)


threads = int(sys.argv[1]) if len(sys.argv) > 1 else 16
call = mb.measure_cpu_call_us(threads)
for e, f, k in ((2048, 768, 8), (4096, 14336, 2)):
    shape = mb.DramBenchShape.for_experts(e, f, k)
    for rep in range(2):
        for name in ("zero-copy 4K", "zero-copy THP", "repack 4K", "repack THP"):
            mb._q4_0_tensor = huge_tensor if name == "zero-copy THP" else orig_tensor
            ce.HUGE_PAGES = name == "repack THP"
            ce.CpuExpertConfig = Repack if name.startswith("repack") else Repack.__mro__[1]
            g = mb.measure_dram_gbps(threads, 3.0, shape, call_us=call)
            print(f"{e}x{f} k={k} {name:14s}: {g:5.1f} GB/s  (process AnonHugePages {anon_huge()} kB after)", flush=True)
