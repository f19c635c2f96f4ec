"""Grouped prefill kernels: old (HEAD) vs new configs, Qwen3 and Mixtral shapes, 512 tokens, Q4_0.

python3 scratch/grouped_bench.py
"""
import itertools
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, "scratch")
import grouped_old  # noqa: E402

from edge_moe import grouped_kernels as gk  # noqa: E402

dev = torch.device("cuda")
rng = np.random.default_rng(0)


def q4_matrix(rows, cols):
    blocks = rng.integers(0, 256, (rows, cols // 32, 18), dtype=np.uint8)
    scale = (rng.random((rows, cols // 32)) * 0.02 + 0.005).astype(np.float16)
    blocks[:, :, :2] = scale.view(np.uint8).reshape(rows, cols // 32, 2)
    return blocks.reshape(rows, -1)


def build(n_expert, E, Fd):
    parts = []
    for _ in range(n_expert):
        g, u, d = q4_matrix(Fd, E), q4_matrix(Fd, E), q4_matrix(E, Fd)
        ex = []
        for m in (g, u, d):
            b = m.reshape(-1)
            pad = (-b.size) % 256
            ex.append(np.concatenate([b, np.zeros(pad, np.uint8)]))
        parts.append(ex)
    sizes = [p.size for p in parts[0]]
    stride = sum(sizes)
    buf = np.concatenate([np.concatenate(ex) for ex in parts])
    offs = np.array([0, sizes[0], sizes[0] + sizes[1]], dtype=np.int64)
    t = torch.from_numpy(buf).to(dev)
    return t, t.view(torch.int16), stride, offs, g.shape[1], d.shape[1]


def tables(mod, slot, tok, widx, stride, offs, **kw):
    tile_slot, start, count, ptok, pwidx = mod.tile_table(slot, tok, widx, **kw)
    off = (tile_slot[None] * stride + offs[:, None]).astype(np.int64)
    return (torch.from_numpy(off).to(dev), torch.from_numpy(start.astype(np.int32)).to(dev),
            torch.from_numpy(count.astype(np.int32)).to(dev), torch.from_numpy(ptok.astype(np.int32)).to(dev),
            torch.from_numpy(pwidx.astype(np.int64)).to(dev))


def timeit(fn, n=20):
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n * 1e-3


for name, n_expert, E, Fd, k in (("qwen3", 128, 2048, 768, 8), ("mixtral", 8, 4096, 14336, 2)):
    T = 512
    b, w16, stride, offs, row_in, row_down = build(n_expert, E, Fd)
    ids = np.stack([rng.choice(n_expert, k, replace=False) for _ in range(T)])
    wts = torch.from_numpy(rng.random((T, k)).astype(np.float32)).to(dev).reshape(-1)
    x = (torch.randn(T, E, device=dev) * 0.5).half()
    tok, j = np.nonzero(np.ones_like(ids, bool))
    slot = ids[tok, j]
    widx = tok * k + j
    flops = T * k * 3 * E * Fd * 2
    counts = np.bincount(slot)
    print(f"== {name}: {T * k} pairs, tokens/expert mean {counts.mean():.1f} max {counts.max()}", flush=True)
    y_old = torch.zeros(T, E, device=dev)
    to = tables(grouped_old, slot, tok, widx, stride, offs)
    run_old = lambda: grouped_old.grouped_ffn(b, w16, 2, 2, E, Fd, row_in, row_down, *to, wts, x, y_old)  # noqa
    if name == "qwen3":
        s = timeit(run_old, 5)
        print(f"old BT16: {s * 1e3:.3f} ms  {flops / s / 1e12:.1f} TFLOP/s", flush=True)
    y_old.zero_()
    run_old()
    ref = y_old.clone()
    best = None
    bts = (16, 32, 64) if name == "qwen3" else (32, 64, 128)
    for bt, bn, nb, warps in itertools.product(bts, (64, 128), (2, 4), (4, 8)):
        if bt * bn > 8192:
            continue
        tn = tables(gk, slot, tok, widx, stride, offs, bt=bt)
        y = torch.zeros(T, E, device=dev)
        fn = lambda: gk.grouped_ffn(b, w16, 2, 2, E, Fd, row_in, row_down, *tn, wts, x, y,  # noqa
                                    bt=bt, bn=bn, nb=nb, warps=warps)
        try:
            fn()
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001
            print(f"bt {bt} bn {bn} nb {nb} w {warps}: failed {type(e).__name__} {str(e)[:100]}")
            continue
        y.zero_()
        fn()
        err = ((y - ref).abs().max() / ref.abs().max()).item()
        s = timeit(fn, 5 if name == "mixtral" else 10)
        print(f"bt {bt:3d} bn {bn:3d} nb {nb} w {warps}: {s * 1e3:.3f} ms  {flops / s / 1e12:.1f} TFLOP/s  "
              f"rel err vs old {err:.1e}", flush=True)
        if best is None or s < best[0]:
            best = (s, bt, bn, nb, warps)
    print("best", best, flush=True)
    # the dequantize + cuBLAS path for comparison: per expert, three fp16 matrices and three GEMMs
    from edge_moe.quant_ops import QuantBuffer, QuantMatrix, dequantize
    qb = QuantBuffer(b)
    mg = QuantMatrix(2, Fd, E)
    md = QuantMatrix(2, E, Fd)
    scratch = torch.empty(E * Fd, dtype=torch.float16, device=dev)

    def deq_path():
        yy = torch.zeros(T, E, device=dev)
        for e in range(n_expert):
            rows_np, jj = np.nonzero(ids == e)
            rows = torch.as_tensor(rows_np, device=dev)
            hs = x[rows]
            base = e * stride
            a = F.linear(hs, dequantize(qb, mg, base + int(offs[0]), scratch.view(Fd, E)))
            bb = F.linear(hs, dequantize(qb, mg, base + int(offs[1]), scratch.view(Fd, E)))
            out = F.linear(F.silu(a) * bb, dequantize(qb, md, base + int(offs[2]), scratch.view(E, Fd)))
            yy.index_add_(0, rows, out.float() * wts.view(T, k)[rows, torch.as_tensor(jj, device=dev)][:, None])
        return yy
    t0 = time.perf_counter()
    s = timeit(deq_path, 3)
    print(f"dequantize+cuBLAS per expert: {s * 1e3:.3f} ms  {flops / s / 1e12:.1f} TFLOP/s", flush=True)
    del b, w16
    torch.cuda.empty_cache()
