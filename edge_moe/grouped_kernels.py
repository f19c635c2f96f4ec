"""Grouped expert FFNs for prefill: every cached expert of a layer times the tokens routed to
it, with tensor-core tiles, dequantizing Q4_0 / Q8_0 blocks in registers.

Work is cut into *tiles*: up to BT (token, expert) pairs of ONE expert (pairs sorted by the
slot holding it). A program computes one tile against BN rows of the expert's matrices, so
each weight byte is read once per tile instead of once per token (the matvec kernels) and no
fp16 copy of the expert is written (the dequantize + matmul path: ~12 launches and ~0.15 ms
of host time per expert, which made a 512-token Qwen3 prefill spend ~3 s in its experts).

    _grouped_glu_kernel:  act[p] = silu(G_e x[tok_p]) * (U_e x[tok_p])        [P, F]  (x's dtype)
    _grouped_down_kernel: y[tok_p] += w[widx_p] * (D_e act[p])                 [T, E]  fp32, atomic

Weights come as [BN, BK] tiles in the order their bytes hold them (Q4_0: a byte's low nibble
is column j, its high nibble column j + 16 of the block), and the input tile is gathered in
that same column order, so no shuffling of weights is needed. NB * 32 columns per K step.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from edge_moe.quant_kernels import Q4_0, Q8_0

GROUPED_TYPES = frozenset({Q4_0, Q8_0})
BT, BN, NB = 16, 64, 2  # pairs per tile, rows per program, 32-column blocks per K step (defaults)
BK = 64  # every config's K step divides it: the dims a layer needs (`grouped_supported`)
# (BT, BN, NB, warps) by the most pairs any expert has in the call, from a sweep on the H100
# box (session 11, 512-token prefill, Q4_0): Qwen3's 128 experts x ~32 tokens took 1.43 ms in
# the defaults, 1.10 ms in the small-tile config, 1.02 ms in the large one (one tile an expert:
# each weight is dequantized once per call). Mixtral's ~128 tokens an expert took 7.9 ms at best
# here against 5.4 ms dequantized + cuBLAS, so those stay on that path (hit_compute.py).
SMALL_TILES, LARGE_TILES = (16, 128, 4, 4), (64, 128, 2, 4)


def tile_config(max_pairs: int, n_embd: int, n_ff: int) -> tuple[int, int, int, int]:
    """(BT, BN, NB, warps) for a call whose busiest expert has `max_pairs` pairs (NB * 32
    columns per K step must divide both dims: no masking in K)."""
    bt, bn, nb, warps = SMALL_TILES if max_pairs <= SMALL_TILES[0] else LARGE_TILES
    while n_embd % (nb * 32) or n_ff % (nb * 32):
        nb //= 2
    return bt, bn, nb, warps


@triton.jit
def _w_tile(wb, ww, row_off, k0, QTYPE: tl.constexpr, NB: tl.constexpr, FP16: tl.constexpr):
    """Weights of rows at byte offsets row_off [BN] (int64), columns k0 .. k0 + NB*32, as a
    tile [BN, NB*32] in byte order (fp16 with FP16, else float32), and the column index of
    each of its entries. fp16 dequantization is exact to the same rounding as float32's
    followed by a cast: q - 8 and the int8 values are exact in fp16, and one correctly
    rounded product is the same number either way."""
    b = tl.arange(0, NB)
    blk = k0 // 32 + b  # [NB]
    if QTYPE == 2:  # Q4_0: fp16 scale, 16 bytes of nibbles (low: column j, high: j + 16)
        base = row_off[:, None] + blk[None, :] * 18  # [BN, NB]
        j = tl.arange(0, 16)
        q = tl.load(wb + base[:, :, None] + 2 + j[None, None, :])  # [BN, NB, 16] uint8
        if FP16:
            # 0x6400 | n is the fp16 number 1024 + n: nibbles become halves without a conversion
            q = q.to(tl.int16)
            lo = ((q & 15) | 0x6400).to(tl.float16, bitcast=True)
            hi = ((q >> 4) | 0x6400).to(tl.float16, bitcast=True)
            v = tl.join(lo, hi) - 1032.0  # [BN, NB, 16, 2] fp16, q - 8 exactly
        else:
            q = q.to(tl.int32)
            v = tl.join(q & 15, q >> 4).to(tl.float32) - 8.0  # [BN, NB, 16, 2]
        c = blk[:, None] * 32 + j[None, :]  # [NB, 16]
        cols = tl.reshape(tl.join(c, c + 16), [NB * 32])
    else:  # Q8_0: fp16 scale, 32 int8
        base = row_off[:, None] + blk[None, :] * 34
        j = tl.arange(0, 32)
        v = tl.load(wb + base[:, :, None] + 2 + j[None, None, :]).to(tl.int8, bitcast=True)
        v = v.to(tl.float16) if FP16 else v.to(tl.float32)
        cols = tl.reshape(blk[:, None] * 32 + j[None, :], [NB * 32])
    d = tl.load(ww + base // 2).to(tl.float16, bitcast=True)  # [BN, NB]
    if not FP16:
        d = d.to(tl.float32)
    if QTYPE == 2:
        w = v * d[:, :, None, None]
    else:
        w = v * d[:, :, None]
    return tl.reshape(w, [w.shape[0], NB * 32]), cols


@triton.jit
def _dot(a, w, FP16: tl.constexpr):
    """a [BT, BK] @ w[BN, BK]^T in fp32: fp16 tensor cores, or exact fp32 (tests, fp32 models)."""
    if FP16:
        return tl.dot(a.to(tl.float16), tl.trans(w))
    return tl.dot(a, tl.trans(w), input_precision="ieee")


@triton.jit
def _grouped_glu_kernel(wb, ww, tile_off, tile_start, tile_count, pair_tok, x_ptr, act_ptr,
                        N, K: tl.constexpr, row_bytes, x_stride, act_stride, n_tiles,
                        QTYPE: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr,
                        FP16: tl.constexpr):
    t = tl.program_id(0)
    start = tl.load(tile_start + t)
    cnt = tl.load(tile_count + t)
    if cnt == 0:  # a row past the real tiles of a device-built table (device_tile_table)
        return
    g_off = tl.load(tile_off + t)  # row 0 of the tile table: gate, row 1: up
    u_off = tl.load(tile_off + n_tiles + t)
    pi = tl.arange(0, BT)
    pmask = pi < cnt
    tok = tl.load(pair_tok + start + pi, mask=pmask, other=0).to(tl.int64)  # [BT]
    rows = tl.program_id(1) * BN + tl.arange(0, BN)
    rows_c = tl.minimum(rows, N - 1).to(tl.int64)
    acc_g = tl.zeros((BT, BN), dtype=tl.float32)
    acc_u = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, K, NB * 32):
        wg, cols = _w_tile(wb, ww, g_off + rows_c * row_bytes, k0, QTYPE, NB, FP16)
        wu, _ = _w_tile(wb, ww, u_off + rows_c * row_bytes, k0, QTYPE, NB, FP16)
        xa = tl.load(x_ptr + tok[:, None] * x_stride + cols[None, :], mask=pmask[:, None], other=0.0)
        if not FP16:
            xa = xa.to(tl.float32)
        acc_g += _dot(xa, wg, FP16)
        acc_u += _dot(xa, wu, FP16)
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up
    ptr = act_ptr + (start + pi).to(tl.int64)[:, None] * act_stride + rows[None, :]
    tl.store(ptr, act.to(act_ptr.dtype.element_ty), mask=pmask[:, None] & (rows < N)[None, :])


@triton.jit
def _grouped_down_kernel(wb, ww, tile_off, tile_start, tile_count, pair_tok, pair_widx, w_ptr, act_ptr, y_ptr,
                         N, K: tl.constexpr, row_bytes, act_stride, y_stride, n_tiles,
                         QTYPE: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr,
                         FP16: tl.constexpr):
    t = tl.program_id(0)
    start = tl.load(tile_start + t)
    cnt = tl.load(tile_count + t)
    if cnt == 0:
        return
    d_off = tl.load(tile_off + 2 * n_tiles + t)  # row 2 of the tile table: down
    pi = tl.arange(0, BT)
    pmask = pi < cnt
    p = (start + pi).to(tl.int64)
    rows = tl.program_id(1) * BN + tl.arange(0, BN)
    rows_c = tl.minimum(rows, N - 1).to(tl.int64)
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, K, NB * 32):
        wd, cols = _w_tile(wb, ww, d_off + rows_c * row_bytes, k0, QTYPE, NB, FP16)
        a = tl.load(act_ptr + p[:, None] * act_stride + cols[None, :], mask=pmask[:, None], other=0.0)
        acc += _dot(a, wd, FP16)
    tok = tl.load(pair_tok + p, mask=pmask, other=0).to(tl.int64)
    s = tl.load(w_ptr + tl.load(pair_widx + p, mask=pmask, other=0), mask=pmask, other=0.0).to(tl.float32)
    tl.atomic_add(y_ptr + tok[:, None] * y_stride + rows[None, :], acc * s[:, None],
                  mask=pmask[:, None] & (rows < N)[None, :], sem="relaxed")


def grouped_supported(gate_type: int, up_type: int, down_type: int, n_embd: int, n_ff: int) -> bool:
    """Whether a layer's experts can take the grouped kernels (types and dims they handle)."""
    return (gate_type == up_type and {gate_type, down_type} <= GROUPED_TYPES
            and n_embd % BK == 0 and n_ff % BK == 0)


def tile_table(slot: np.ndarray, tok: np.ndarray, widx: np.ndarray, bt: int = BT,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host-side tiling of a layer's pairs (numpy arrays [P]: slot, token row, weight index):
    pairs sorted by slot, each slot's pairs cut into tiles of at most `bt`. Returns (tile_slot,
    tile_start, tile_count, pair_tok, pair_widx), numpy, the pairs in tile order."""
    order = np.argsort(slot, kind="stable")
    s, t, w = slot[order], tok[order], widx[order]
    uniq, first, counts = np.unique(s, return_index=True, return_counts=True)
    per = -(-counts // bt)  # tiles per slot
    tile_slot = np.repeat(uniq, per)
    within = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)  # tile index inside its slot
    tile_start = np.repeat(first, per) + within * bt
    tile_count = np.minimum(bt, np.repeat(first + counts, per) - tile_start)
    return tile_slot, tile_start, tile_count, t, w


def device_tile_table(ids: torch.Tensor, n_expert: int, bt: int, bases: torch.Tensor, part_offsets: torch.Tensor,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`tile_table` on the device, from routed ids [T, k] (device int64) of a resident layer
    whose expert e sits at byte offset bases[e] (part_offsets [3, 1]): no host round trip, so
    the host never waits for the router. The number of tiles is not known on the host, so the
    table has a fixed P // bt + n_expert rows (an upper bound); rows past the real tiles have
    count 0 and their programs return at once. Returns grouped_ffn's (tile_off [3, n],
    tile_start [n] int32, tile_count [n] int32, pair_tok [P] int32, pair_widx [P] int64)."""
    flat = ids.reshape(-1)  # [P]
    k = ids.shape[1]
    order = torch.argsort(flat, stable=True)  # [P] pair indices sorted by expert
    counts = torch.bincount(flat, minlength=n_expert)  # [n_expert]
    tiles = (counts + bt - 1) // bt
    tile_end = torch.cumsum(tiles, 0)  # [n_expert]
    first_pair = torch.cumsum(counts, 0) - counts
    t = torch.arange(flat.shape[0] // bt + n_expert, device=flat.device)  # [n]
    expert = torch.searchsorted(tile_end, t, right=True)  # [n]; n_expert past the last tile
    real = expert < n_expert
    e = expert.clamp(max=n_expert - 1)
    within = t - (tile_end - tiles)[e]  # tile index inside its expert
    start = first_pair[e] + within * bt
    count = torch.where(real, (counts[e] - within * bt).clamp(0, bt), 0)
    tile_off = bases[e][None, :] + part_offsets  # [3, n]
    return (tile_off, start.to(torch.int32), count.to(torch.int32), (order // k).to(torch.int32), order)


def grouped_ffn(bytes_: torch.Tensor, words: torch.Tensor, gate_type: int, down_type: int, n_embd: int, n_ff: int,
                row_bytes_in: int, row_bytes_down: int, tile_off: torch.Tensor, tile_start: torch.Tensor,
                tile_count: torch.Tensor, pair_tok: torch.Tensor, pair_widx: torch.Tensor, weights: torch.Tensor,
                x: torch.Tensor, y: torch.Tensor, bt: int = BT, bn: int = BN, nb: int = NB, warps: int = 4) -> None:
    """y [T, E] fp32 += sum over pairs of weights[widx_p] * FFN_{slot_p}(x[tok_p]).

    tile_off: int64 [3, n_tiles] byte offsets of each tile's gate, up and down; tile_start,
    tile_count: int32 [n_tiles]; pair_tok: int32 [P], pair_widx: int64 [P] (into the flat
    `weights`); x [T, E] fp16/bf16/fp32, contiguous."""
    n_tiles, n_pairs = tile_start.shape[0], pair_tok.shape[0]
    if n_tiles == 0:
        return
    fp16 = x.dtype != torch.float32
    act = torch.empty((n_pairs, n_ff), dtype=torch.float16 if fp16 else torch.float32, device=x.device)
    _grouped_glu_kernel[(n_tiles, triton.cdiv(n_ff, bn))](
        bytes_, words, tile_off, tile_start, tile_count, pair_tok, x, act,
        n_ff, n_embd, row_bytes_in, x.stride(0), act.stride(0), n_tiles,
        QTYPE=gate_type, BT=bt, BN=bn, NB=nb, FP16=fp16, num_warps=warps)
    _grouped_down_kernel[(n_tiles, triton.cdiv(n_embd, bn))](
        bytes_, words, tile_off, tile_start, tile_count, pair_tok, pair_widx, weights, act, y,
        n_embd, n_ff, row_bytes_down, act.stride(0), y.stride(0), n_tiles,
        QTYPE=down_type, BT=bt, BN=bn, NB=nb, FP16=fp16, num_warps=warps)
