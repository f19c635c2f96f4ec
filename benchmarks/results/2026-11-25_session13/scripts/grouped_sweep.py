"""Tile-config sweep of grouped_kernels.grouped_ffn (current API) on the GPU machine: Qwen3-30B-A3B
experts (128 x 2048 x 768, top-8) and Mixtral's (8 x 4096 x 14336, top-2), 512 tokens, random Q4_0
weights, fp16 x, uniform random routing. Per config: median ms of a call (CUDA events, 3 warm-up,
15 timed), TFLOP/s, the GLU and down kernels' own times (profiler), max |dy| against the first config.

    PYTHONPATH=. python3 grouped_sweep.py [qwen3] [mixtral]
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from edge_moe.grouped_kernels import grouped_ffn, tile_table
from edge_moe.quant_kernels import Q4_0

DEV = torch.device("cuda")
T_TOKENS, REPS, WARMUP = 512, 15, 3
SHAPES = {"qwen3": (128, 2048, 768, 8), "mixtral": (8, 4096, 14336, 2)}
SWEEP = {  # (bt, bn, nb, warps, stages); the first is the shipped LARGE_TILES
    "qwen3": [(64, 128, 2, 4, 2), (64, 64, 2, 4, 2), (64, 64, 2, 4, 3), (32, 128, 2, 4, 2), (32, 64, 2, 4, 2),
              (64, 128, 2, 8, 2), (64, 256, 2, 8, 2), (64, 128, 4, 4, 2), (64, 128, 1, 4, 2), (64, 64, 4, 4, 2)],
    "mixtral": [(64, 128, 2, 4, 2), (64, 128, 2, 4, 3), (64, 128, 4, 4, 3), (128, 128, 2, 8, 2), (128, 128, 2, 8, 3),
                (128, 64, 2, 4, 3), (128, 128, 4, 8, 3), (64, 256, 2, 8, 3), (128, 256, 2, 8, 2), (64, 64, 2, 4, 3),
                (32, 128, 2, 4, 3), (128, 128, 2, 4, 2)],
}


def q4_0_matrix(rows: int, cols: int, out: torch.Tensor) -> None:
    blocks = out.view(rows, cols // 32, 18)
    blocks.random_(0, 256)
    scale = (torch.rand(rows, cols // 32, device=out.device) * 0.02 + 0.005).half()
    blocks[:, :, :2] = scale.view(torch.uint8).view(rows, cols // 32, 2)


def build(n_expert: int, e: int, f: int):
    size = f * e // 32 * 18
    part = -(-size // 256) * 256
    stride = 3 * part
    buf = torch.empty(n_expert * stride, dtype=torch.uint8, device=DEV)
    for i in range(n_expert):
        for p, (r, c) in enumerate(((f, e), (f, e), (e, f))):
            q4_0_matrix(r, c, buf[i * stride + p * part:i * stride + p * part + size])
    return buf, stride, np.array([0, part, 2 * part], dtype=np.int64), e // 32 * 18, f // 32 * 18


def main() -> None:
    for name in sys.argv[1:] or list(SHAPES):
        n_expert, e, f, k = SHAPES[name]
        buf, stride, offs, row_in, row_down = build(n_expert, e, f)
        words = buf.view(torch.int16)
        g = torch.Generator().manual_seed(0)
        ids = torch.rand(T_TOKENS, n_expert, generator=g).topk(k, dim=1).indices.numpy()
        wts = torch.rand(T_TOKENS, k, generator=g).to(DEV)
        x = (torch.randn(T_TOKENS, e, generator=g) * 0.5).half().to(DEV)
        tok, j = np.nonzero(np.ones_like(ids, bool))
        slot, widx = ids[tok, j], tok * k + j
        counts = np.bincount(slot, minlength=n_expert)
        flops = 2 * slot.size * 3 * e * f
        print(f"== {name}: pairs/expert mean {counts.mean():.1f} max {counts.max()}", flush=True)
        ref = None
        for cfg in SWEEP[name]:
            bt = cfg[0]
            ts, start, count, ptok, pwidx = tile_table(slot, tok, widx, bt)
            tb = (torch.from_numpy((ts[None] * stride + offs[:, None]).astype(np.int64)).to(DEV),
                  torch.from_numpy(start.astype(np.int32)).to(DEV), torch.from_numpy(count.astype(np.int32)).to(DEV),
                  torch.from_numpy(ptok.astype(np.int32)).to(DEV), torch.from_numpy(pwidx.astype(np.int64)).to(DEV))
            y = torch.zeros(T_TOKENS, e, dtype=torch.float32, device=DEV)

            def call() -> None:
                grouped_ffn(words, Q4_0, Q4_0, e, f, row_in, row_down, *tb, wts.reshape(-1), x, y, *cfg)
            try:
                t0 = time.perf_counter()
                call()
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                for _ in range(WARMUP):
                    call()
                ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
                for s, en in ev:
                    s.record()
                    call()
                    en.record()
                torch.cuda.synchronize()
                ms = float(np.median([s.elapsed_time(en) for s, en in ev]))
                with profile(activities=[ProfilerActivity.CUDA]) as p:
                    for _ in range(5):
                        call()
                    torch.cuda.synchronize()
                per = {ev_.key: ev_.self_device_time_total / 5e3 for ev_ in p.key_averages()}
                glu = sum(v for kk, v in per.items() if "glu" in kk)
                down = sum(v for kk, v in per.items() if "down" in kk)
                y.zero_()
                call()
                diff = ""
                if ref is None:
                    ref = y.clone()
                else:
                    diff = f" max|dy|/max|y| {((y - ref).abs().max() / ref.abs().max()).item():.1e}"
                print(f"{name} {cfg}: {ms:7.3f} ms {flops / ms / 1e9:6.1f} TFLOP/s  glu {glu:.3f} down {down:.3f} ms"
                      f" (first {first:.1f} s){diff}", flush=True)
            except Exception as err:  # noqa: BLE001
                print(f"{name} {cfg}: FAILED {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}",
                      flush=True)


if __name__ == "__main__":
    main()
