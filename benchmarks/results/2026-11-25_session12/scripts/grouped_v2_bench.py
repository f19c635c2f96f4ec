"""Time grouped_kernels.grouped_ffn against scratch/grouped_v2.py's variants on an H100:
Qwen3-30B-A3B experts (128 x n_embd 2048 x n_ff 768, 512 tokens top-8) and Mixtral's (8 x 4096
x 14336, 512 tokens top-2), random Q4_0 weights, fp16 x, uniform random routing.

    PYTHONPATH=/work/main python3 scratch/grouped_v2_bench.py [qwen3] [mixtral]

Per config: ms per call (CUDA events around each call, 3 warm-up calls, median of 20),
TFLOP/s (2 * pairs * 3 * n_embd * n_ff / t) and the max abs difference of y from the existing
kernel's (also relative to its max |y|; int8 is expected at ~1e-2 of it, fp16w at ~1e-3 or less).
A config that fails to compile or run is printed and skipped. For Mixtral, also the
dequantize + cuBLAS path (hit_compute.HitCompute._compute_dequantized, host work included).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grouped_v2 import grouped_ffn_v2  # noqa: E402

from edge_moe.grouped_kernels import grouped_ffn, tile_config, tile_table  # noqa: E402
from edge_moe.hit_compute import HitCompute  # noqa: E402
from edge_moe.quant_kernels import Q4_0  # noqa: E402
from edge_moe.quant_ops import QuantBuffer, QuantMatrix  # noqa: E402

DEV = torch.device("cuda")
T_TOKENS, REPS, WARMUP = 512, 20, 3

# (variant, bt, bn, nb, warps, stages, w32): ~20 in all (each compiles 2-3 kernels)
SWEEP = {
    "qwen3": [  # ~32 pairs an expert (max ~50): one tile of 64 an expert, or 1-2 of 32
        ("fp16w", 64, 128, 2, 4, 2, False),
        ("fp16w", 64, 128, 2, 4, 3, False),
        ("fp16w", 64, 128, 2, 4, 2, True),
        ("fp16w", 64, 128, 4, 4, 3, True),
        ("fp16w", 64, 64, 4, 4, 3, True),
        ("fp16w", 32, 128, 4, 4, 3, True),
        ("int8", 64, 128, 2, 4, 2, False),
        ("int8", 64, 128, 2, 4, 2, True),
        ("int8", 64, 128, 4, 8, 3, True),
        ("int8", 32, 128, 4, 4, 3, True),
        ("int8", 64, 64, 4, 4, 2, True),
    ],
    "mixtral": [  # ~128 pairs an expert
        ("fp16w", 64, 128, 2, 4, 2, False),
        ("fp16w", 64, 128, 4, 4, 3, True),
        ("fp16w", 128, 64, 4, 4, 3, True),
        ("fp16w", 128, 128, 2, 8, 3, True),
        ("int8", 64, 128, 2, 4, 2, False),
        ("int8", 64, 128, 4, 4, 3, True),
        ("int8", 128, 64, 4, 4, 2, True),
        ("int8", 128, 128, 2, 8, 3, True),
    ],
}
SHAPES = {"qwen3": (128, 2048, 768, 8), "mixtral": (8, 4096, 14336, 2)}  # n_expert, n_embd, n_ff, top-k


def q4_0_matrix(rows: int, cols: int, out: torch.Tensor) -> None:
    """Random Q4_0 bytes of a [rows, cols] matrix into out (uint8 [rows * cols / 32 * 18]):
    random nibbles, fp16 scales in [0.005, 0.025)."""
    blocks = out.view(rows, cols // 32, 18)
    blocks.random_(0, 256)
    scale = (torch.rand(rows, cols // 32, device=out.device) * 0.02 + 0.005).half()
    blocks[:, :, :2] = scale.view(torch.uint8).view(rows, cols // 32, 2)


def build(n_expert: int, e: int, f: int):
    """All experts in one buffer: expert i's gate, up, down at i * stride + part_offsets, every
    part 256-aligned. Returns (buffer, stride, part_offsets [3] int64, row bytes in / down)."""
    size = f * e // 32 * 18  # bytes of each of gate [f, e], up [f, e], down [e, f]
    part = -(-size // 256) * 256
    stride = 3 * part
    buf = torch.empty(n_expert * stride, dtype=torch.uint8, device=DEV)
    for i in range(n_expert):
        q4_0_matrix(f, e, buf[i * stride:i * stride + size])
        q4_0_matrix(f, e, buf[i * stride + part:i * stride + part + size])
        q4_0_matrix(e, f, buf[i * stride + 2 * part:i * stride + 2 * part + size])
    return buf, stride, np.array([0, part, 2 * part], dtype=np.int64), e // 32 * 18, f // 32 * 18


def tables(slot, tok, widx, stride, offs, bt):
    tile_slot, start, count, ptok, pwidx = tile_table(slot, tok, widx, bt)
    off = (tile_slot[None] * stride + offs[:, None]).astype(np.int64)  # [3, n_tiles]
    return (torch.from_numpy(off).to(DEV), torch.from_numpy(start.astype(np.int32)).to(DEV),
            torch.from_numpy(count.astype(np.int32)).to(DEV), torch.from_numpy(ptok.astype(np.int32)).to(DEV),
            torch.from_numpy(pwidx.astype(np.int64)).to(DEV))


def median_ms(fn) -> float:
    for _ in range(WARMUP):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return float(np.median([s.elapsed_time(e) for s, e in ev]))


def run_shape(name: str) -> None:
    n_expert, e, f, k = SHAPES[name]
    t0 = time.perf_counter()
    buf, stride, offs, row_in, row_down = build(n_expert, e, f)
    words = buf.view(torch.int16)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.rand(T_TOKENS, n_expert, generator=g).topk(k, dim=1).indices.numpy()  # uniform top-k
    wts = torch.rand(T_TOKENS, k, generator=g).to(DEV)
    x = (torch.randn(T_TOKENS, e, generator=g) * 0.5).half().to(DEV)
    tok, j = np.nonzero(np.ones_like(ids, bool))
    slot, widx = ids[tok, j], tok * k + j
    counts = np.bincount(slot, minlength=n_expert)
    flops = 2 * slot.size * 3 * e * f
    print(f"== {name}: {n_expert} experts {e} x {f}, {slot.size} pairs, pairs/expert mean {counts.mean():.1f} "
          f"max {counts.max()} (built in {time.perf_counter() - t0:.1f} s)", flush=True)

    def report(label: str, fn, ref: torch.Tensor | None) -> torch.Tensor | None:
        y = torch.zeros(T_TOKENS, e, dtype=torch.float32, device=DEV)
        try:
            t1 = time.perf_counter()
            fn(y)
            torch.cuda.synchronize()
            first = time.perf_counter() - t1
            ms = median_ms(lambda: fn(y))
        except Exception as err:  # noqa: BLE001 (one bad config must not end the sweep)
            print(f"{label:52s} FAILED {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}",
                  flush=True)
            traceback.print_exc(limit=1, file=sys.stdout)
            return None
        y.zero_()
        fn(y)
        diff = ""
        if ref is not None:
            d = (y - ref).abs().max().item()
            diff = f"  max|dy| {d:.3e} ({d / ref.abs().max().item():.1e} of max|y|)"
        print(f"{label:52s} {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s  (first call {first:.1f} s){diff}",
              flush=True)
        return y

    bt, bn, nb, warps = tile_config(int(counts.max()), e, f)
    tb = tables(slot, tok, widx, stride, offs, bt)
    ref = report(f"grouped_ffn bt {bt} bn {bn} nb {nb} w {warps} (tile_config)",
                 lambda y: grouped_ffn(buf, words, Q4_0, Q4_0, e, f, row_in, row_down, *tb, wts.reshape(-1), x, y,
                                       bt, bn, nb, warps), None)
    by_bt = {bt: tb}
    for variant, bt, bn, nb, warps, stages, w32 in SWEEP[name]:
        if bt not in by_bt:
            by_bt[bt] = tables(slot, tok, widx, stride, offs, bt)
        tb = by_bt[bt]
        label = f"{variant:5s} bt {bt:3d} bn {bn:3d} nb {nb} w {warps} st {stages} {'w32' if w32 else 'w16'}"
        report(label, lambda y, tb=tb, v=variant, c=(bt, bn, nb, warps), st=stages, w=w32: grouped_ffn_v2(
            buf, words, Q4_0, Q4_0, e, f, row_in, row_down, *tb, wts.reshape(-1), x, y, *c, variant=v,
            stages=st, w32=w), ref)
    if name == "mixtral":  # the repo's dequantize + cuBLAS path, host work included
        hc = _dequant_path(buf, stride, offs, e, f)
        report("dequantize + cuBLAS (HitCompute._compute_dequantized)",
               lambda y: hc._compute_dequantized(0, x, wts, slot, tok, widx, y), ref)
    del buf, words
    torch.cuda.empty_cache()


def _dequant_path(buf: torch.Tensor, stride: int, offs: np.ndarray, e: int, f: int) -> HitCompute:
    """A HitCompute carrying just what _compute_dequantized reads (one layer of these experts)."""
    hc = HitCompute.__new__(HitCompute)
    hc.cfg = SimpleNamespace(n_embd=e, n_ff_expert=f)
    hc.device, hc.dtype, hc._scratch = DEV, torch.float16, None
    hc._buf = QuantBuffer(buf)
    hc._layouts = [(QuantMatrix(Q4_0, f, e), QuantMatrix(Q4_0, f, e), QuantMatrix(Q4_0, e, f))]
    hc._stride, hc._part_offsets = stride, offs[:, None]
    return hc


def main() -> None:
    names = [a for a in sys.argv[1:] if a in SHAPES] or list(SHAPES)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    t0 = time.perf_counter()
    for name in names:
        run_shape(name)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
