"""Graph-timed GPU time of each int8 matvec launch of a decode layer (gate+up, down; dense qkv / o)
under (rows a program, warps, blocks a step) tiles, set through quant_ops' module constants.

python3 scratch/tile_sweep.py [qwen3,mixtral,dense] [Q4_0,...]
"""
import itertools
import sys

import numpy as np
import torch

import edge_moe.quant_ops as qo
from benchmarks.quant_kernels_bench import fp16_gemv_gbps, random_blocks
from edge_moe.quant_ops import QuantBuffer, QuantMatrix, glu_pairs, matvec_pairs, scatter_pairs

TYPES = {"Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
FULL = [(r, w, b) for r in (1, 2, 4, 8) for w in (1, 2, 4) for b in (16, 32)]
SMALL = [(1, 1, 32), (1, 1, 16), (2, 1, 32), (2, 2, 32), (4, 2, 32), (4, 4, 32), (8, 4, 32), (4, 4, 16), (8, 8, 32)]
# (name, n_rows, n_cols, pairs, mode)
LAUNCHES = {"qwen3": [("glu", 768, 2048, 8, "glu"), ("down", 2048, 768, 8, "down")],
            "mixtral": [("glu", 14336, 4096, 2, "glu"), ("down", 4096, 14336, 2, "down")],
            "dense": [("qkv", 5120, 2048, 1, "store"), ("o", 2048, 4096, 1, "store")]}


def gpu_us(fn, n_calls: int) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n_calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    s.record()
    for _ in range(reps):
        g.replay()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) * 1e3 / reps / n_calls


def main() -> None:
    shapes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["qwen3", "mixtral", "dense"]
    types = sys.argv[2].split(",") if len(sys.argv) > 2 else ["Q4_0"]
    rng = np.random.default_rng(0)
    ref = fp16_gemv_gbps(4096, 14336)
    print(f"fp16 GEMV {ref:.0f} GB/s")
    for shape, qname in itertools.product(shapes, types):
        qtype = TYPES[qname]
        for name, n, k, pairs, mode in LAUNCHES[shape]:
            m = QuantMatrix(qtype, n, k)
            n_hold = max(pairs, -(-(256 << 20) // m.nbytes))  # > 5x L2: no call re-reads from L2
            buf = QuantBuffer(torch.from_numpy(np.concatenate([random_blocks(qtype, n, k, rng) for _ in range(n_hold)])).cuda())
            n_calls = n_hold // pairs
            offs = [torch.arange(c * pairs, (c + 1) * pairs, device="cuda", dtype=torch.int64) * m.nbytes
                    for c in range(n_calls)]
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            act = torch.randn(pairs, k, device="cuda", dtype=torch.float32)
            zeros = torch.zeros(pairs, device="cuda", dtype=torch.int32)
            w = torch.rand(pairs, device="cuda", dtype=torch.float32)
            kidx = torch.arange(pairs, device="cuda", dtype=torch.int32)
            y = torch.zeros(1, n, device="cuda", dtype=torch.float32)
            cur = [0]

            def run() -> None:
                o, o_up = offs[cur[0]], offs[(cur[0] + n_calls // 2) % n_calls]
                cur[0] = (cur[0] + 1) % n_calls
                if mode == "glu":
                    glu_pairs(buf, m, m, o, o_up, x, zeros)  # up: other matrices of the pool
                elif mode == "down":
                    scatter_pairs(buf, m, o, act, w, kidx, zeros, y)
                else:
                    matvec_pairs(buf, m, o, x, zeros, torch.float16)

            nbytes = pairs * m.nbytes * (2 if mode == "glu" else 1)
            grid = FULL if (qname == "Q4_0" and shape == "qwen3") else SMALL
            res = []
            for r, wp, b in grid:
                if qtype in (12, 13, 14) and b < 8:
                    continue
                qo.MATVEC_ROWS, qo.MATVEC_WARPS, qo.MATVEC_BLOCKS = r, wp, b
                qo._BLOCKS_BY_TYPE.clear()
                cur[0] = 0
                try:
                    us = gpu_us(run, n_calls)
                except Exception as exc:  # noqa: BLE001
                    print(f"  {shape} {qname} {name} r{r} w{wp} b{b}: {type(exc).__name__} {str(exc)[:80]}")
                    continue
                res.append((us, r, wp, b))
                print(f"  {shape:7s} {qname} {name:4s} rows {r} warps {wp} blocks {b:2d}: {us:7.2f} us "
                      f"{nbytes / us / 1e3:6.0f} GB/s ({nbytes / us / 1e3 / ref:4.2f})", flush=True)
            res.sort()
            base = [u for u, r, wp, b in res if (r, wp, b) == (1, 1, 32)]
            print(f"BEST {shape} {qname} {name}: {res[0][0]:.2f} us at rows {res[0][1]} warps {res[0][2]} blocks "
                  f"{res[0][3]} ({nbytes / res[0][0] / 1e3 / ref:.2f} of fp16); shipped (1,1,32) "
                  f"{base[0] if base else float('nan'):.2f} us", flush=True)
            del buf
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
