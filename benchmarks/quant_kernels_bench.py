"""Effective bandwidth of the quantized expert kernels against torch's fp16 GEMV, same run.

    python -m benchmarks.quant_kernels_bench [--json OUT] [--sweep]

For Mixtral-8x7B-shaped experts (E 4096, F 14336, top-2) and Qwen3-30B-A3B-shaped ones
(E 2048, F 768, top-8), one decode token (T = 1): a layer's hits over k distinct experts,
by the two-launch path (gate+up fused with SiLU, then down scattered; each launch quantizes
its input to int8 first) or the one-launch fused kernel (edge_moe/fused_ffn.py, Q4_0 / Q8_0), timed with CUDA
events over many repetitions. "GB/s" counts the quantized bytes the kernels must read
(k experts x (gate + up + down)); the fp16 reference is F.linear of one [F, E] fp16 matrix
by one vector (torch/cuBLAS), counting its fp16 bytes. Times are GPU times of a CUDA graph
replaying the layer over experts that do not fit in L2; the eager time (Python launches
included) is reported beside them. The expert weights are random valid
blocks (small fp16 scales); speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = {"mixtral": (4096, 14336, 8, 2), "qwen3": (2048, 768, 128, 8)}  # E, F, experts, k
TYPES = {"Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def random_blocks(qtype: int, n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    from edge_moe.quant_kernels import BLOCKS

    block, nbytes = BLOCKS[qtype]
    raw = rng.integers(0, 256, size=(n_rows * n_cols // block, nbytes), dtype=np.uint8)
    scale = np.full(raw.shape[0], 0.001, dtype=np.float16).view(np.uint8).reshape(-1, 2)
    if qtype in (2, 8):
        raw[:, 0:2] = scale
    elif qtype in (12, 13):
        raw[:, 0:2] = scale
        raw[:, 2:4] = scale
    elif qtype == 14:
        raw[:, 208:210] = scale
    return raw.reshape(-1)


def time_ms(fn, reps: int = 200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def fp16_gemv_gbps(e: int, f: int) -> float:
    w = torch.randn(f, e, device="cuda", dtype=torch.float16)
    x = torch.randn(1, e, device="cuda", dtype=torch.float16)
    ms = time_ms(lambda: F.linear(x, w))
    return w.numel() * 2 / ms / 1e6


def bench_layer(shape: str, qname: str, rng: np.random.Generator, fused: bool = False) -> dict[str, float]:
    from edge_moe.fused_ffn import fused_ffn_pairs
    from edge_moe.quant_ops import QuantBuffer, QuantMatrix, glu_pairs, scatter_pairs

    e, f, n_exp, k = SHAPES[shape]
    qtype = TYPES[qname]
    gate, down = QuantMatrix(qtype, f, e), QuantMatrix(qtype, e, f)
    per_expert = 2 * gate.nbytes + down.nbytes
    # distinct experts in memory (>= 256 MB, 5x the H100's L2), visited in turn: no call re-reads from L2
    n_hold = k * max(1, -(-(256 << 20) // (k * per_expert)))
    parts = [random_blocks(qtype, f, e, rng) if i % 3 < 2 else random_blocks(qtype, e, f, rng)
             for i in range(3 * n_hold)]
    offs = np.cumsum([0] + [p.size for p in parts])[:-1]
    buf = QuantBuffer(torch.from_numpy(np.concatenate(parts)).cuda())
    x = torch.randn(1, e, device="cuda", dtype=torch.float16)
    w = torch.rand(1, k, device="cuda", dtype=torch.float16)
    cur = [0]

    def run() -> None:  # rotate through the held experts between calls
        g_off, u_off, d_off = (idx[cur[0]] for idx in offsets)  # precomputed [k] offsets on the device
        y = torch.zeros(1, e, device="cuda", dtype=torch.float32)
        if fused:  # one launch over the pair table (gpu_experts.pair_table's layout)
            fused_ffn_pairs(buf, gate, down, tables[cur[0]], x, w.view(-1), y)
            cur[0] = (cur[0] + 1) % len(tables)
            return
        cur[0] = (cur[0] + 1) % len(offsets[0])
        act = glu_pairs(buf, gate, gate, g_off, u_off, x, zeros)
        scatter_pairs(buf, down, d_off, act, w.view(-1), kidx, zeros, y)

    # rotate through the held experts between calls: k distinct experts per call
    sel = [[(r * k + j) % n_hold for j in range(k)] for r in range(n_hold)]
    offsets = [[torch.as_tensor(offs[i::3][s], device="cuda", dtype=torch.int64) for s in sel] for i in range(3)]
    zeros = torch.zeros(k, device="cuda", dtype=torch.int32)
    tables = [torch.stack([offsets[0][r], offsets[1][r], offsets[2][r], zeros.long(), torch.arange(k, device="cuda")])
              for r in range(len(sel))]
    kidx = torch.arange(k, device="cuda", dtype=torch.int32)
    ms = time_ms(run)  # eager: Python launch overhead included where it exceeds the GPU time
    n_calls = len(sel)
    graph = torch.cuda.CUDAGraph()
    run()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for _ in range(n_calls):
            run()
    gpu_ms = time_ms(graph.replay, reps=max(1, 400 // n_calls)) / n_calls  # GPU time of one layer
    nbytes = k * per_expert
    return {"eager_ms": ms, "ms": gpu_ms, "gbps": nbytes / gpu_ms / 1e6, "eager_gbps": nbytes / ms / 1e6,
            "bytes": nbytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--paths", default="two,fused", help="two: glu_pairs + scatter_pairs; fused: fused_ffn_pairs "
                    "(Q4_0 / Q8_0 only)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    import edge_moe.fused_ffn as ff
    import edge_moe.quant_ops as qo

    rng = np.random.default_rng(0)
    rows = []
    ref = fp16_gemv_gbps(4096, 14336)  # one [14336, 4096] fp16 matrix: ~2.7 TB/s on the H100
    for shape in SHAPES:
        for qname, path in ((q, pa) for q in args.types.split(",") for pa in args.paths.split(",")):
            if path == "fused" and qname not in ("Q4_0", "Q8_0"):
                continue
            r = bench_layer(shape, qname, rng, fused=path == "fused")
            rows.append({"shape": shape, "type": qname, "path": path, "k": SHAPES[shape][3],
                         "rows": qo.matvec_rows(qo.QuantMatrix(TYPES[qname], SHAPES[shape][0], SHAPES[shape][1])),
                         "warps": qo.MATVEC_WARPS, "blocks": qo.matvec_blocks(TYPES[qname]), "ffn_warps": ff.FFN_WARPS,
                         "ffn_nblk": ff.FFN_NBLK, "ffn_drows": ff.FFN_DROWS,
                         "fp16_gemv_gbps": ref, **r, "fraction_of_fp16": r["gbps"] / ref})
            print(f"{shape:8s} {qname:5s} {path:5s} rows {rows[-1]['rows']:3d} warps {qo.MATVEC_WARPS} "
                  f"blocks {qo.matvec_blocks(TYPES[qname]):2d} "
                  f"ffn {ff.FFN_WARPS}/{ff.FFN_NBLK}/{ff.FFN_DROWS}: layer GPU {r['ms'] * 1e3:7.1f} us "
                  f"(eager {r['eager_ms'] * 1e3:7.1f} us) {r['gbps']:6.0f} GB/s  fp16 GEMV {ref:6.0f} GB/s "
                  f"-> {r['gbps'] / ref:5.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "env": {k: v for k, v in os.environ.items()
                                                                       if k.startswith("EDGE_MOE_")}, "rows": rows},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
