"""Grouped expert FFNs for prefill: every cached expert of a layer times the tokens routed to
it, with tensor-core tiles, dequantizing Q4_0 / Q8_0 blocks in registers.

Work is cut into *tiles*: up to BT (token, expert) pairs of ONE expert (pairs sorted by the
slot holding it). A program computes one tile against BN rows of the expert's matrices, so
each weight byte is read once per tile instead of once per token (the matvec kernels) and no
fp16 copy of the expert is written (the dequantize + matmul path: ~12 launches and ~0.15 ms
of host time per expert, which made a 512-token Qwen3 prefill spend ~3 s in its experts).

    _grouped_glu_kernel:  act[p] = silu(G_e x[tok_p]) * (U_e x[tok_p])        [P, F]
    _grouped_down_kernel: y[tok_p] += w[widx_p] * (D_e act[p])                 [T, E]  fp32, atomic

fp16 / bf16 x: weights dequantized to fp16, fp16 tensor-core dots, fp32 accumulators, act in
fp16. fp32 x (tests, fp32 models): the same in float32 with exact ("ieee") dots.

Column order. Weights are read as int16 words (the blocks' bytes start 2 bytes after their fp16
scale: a Q4_0 block is 9 words, a Q8_0 block 17), and a tile keeps them in the order the words
hold them. Q4_0 byte i of a block holds columns i (low nibble) and i + 16 (high), so word j
gives columns 2j, 2j + 16, 2j + 1, 2j + 17: position i of a block <- column i // 2 + 16 (i % 2)
(`byte_order`). Q8_0 words hold their columns in natural order. A dot product does not care
in which order its columns come, so the activations are put in the weights' order once
instead of being gathered in it in every K step: x is permuted by one index_select per call
(Q4_0 gate / up), and the GLU kernel writes act already in the down weights' order; both
kernels then read their activations as contiguous row segments. NB * 32 columns per K step.

Measured on the H100 box (session 12, 512-token prefill, Q4_0, fp16 x, the config
bt 64 bn 128 nb 2 warps 4 stages 2): Qwen3's 128 experts 2048 x 768 (~32 pairs an expert)
0.448 ms a layer (the previous kernels, which gathered x in byte order from natural-order rows
and read weights byte by byte: 0.995 ms; 3 stages: 0.501 ms; weights read as int32 words:
0.645 ms); Mixtral's 8 experts 4096 x 14336 (~128 pairs an expert) 2.63 ms (previous kernels
7.99 ms; dequantize + cuBLAS, hit_compute's _compute_dequantized: 3.46 ms). Max |dy| against
the previous kernels ~1e-7 of max |y| (each dot sums the same columns in the same order; under
Triton's interpreter the results are bit-identical, fp32 x included). Quantizing x and act to
int8 for int8 tensor-core dots (llama.cpp's MMQ style) was slower at both shapes
(benchmarks/results/2026-11-25_session12/callB_grouped_v2_sweep.txt).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from edge_moe.quant_kernels import Q4_0, Q8_0

GROUPED_TYPES = frozenset({Q4_0, Q8_0})
BK = 64  # every config's K step divides it: the dims a layer needs (`grouped_supported`)
# (BT, BN, NB, warps, stages) by the most pairs any expert has in the call. LARGE_TILES is
# session 12's best for both Qwen3 (~32 pairs an expert: one tile each, so each weight is
# dequantized once per call) and Mixtral (~128: 2-3 tiles). SMALL_TILES, for calls whose
# experts have at most 16 pairs (short prompts: a 64-pair tile would be mostly masked), is
# session 11's choice for the previous kernels (their stages: these kernels' 2), not re-timed.
SMALL_TILES, LARGE_TILES = (16, 128, 4, 4, 2), (64, 128, 2, 4, 2)
BT, BN, NB, WARPS, STAGES = LARGE_TILES  # grouped_ffn's defaults


_byte_order_cache: dict[tuple[int, str], torch.Tensor] = {}


def byte_order(k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 [k]: the natural column at each position of Q4_0's word order, block by block:
    position i of a block <- column i // 2 + 16 (i % 2). Cached per (k, device)."""
    key = (k, str(device))
    if key not in _byte_order_cache:
        i = torch.arange(k, dtype=torch.int64)
        _byte_order_cache[key] = ((i // 32) * 32 + (i % 32) // 2 + 16 * (i % 2)).to(device)
    return _byte_order_cache[key]


def tile_config(max_pairs: int, n_embd: int, n_ff: int) -> tuple[int, int, int, int, int]:
    """(BT, BN, NB, warps, stages) for a call whose busiest expert has `max_pairs` pairs (NB * 32
    columns per K step must divide both dims: no masking in K)."""
    bt, bn, nb, warps, stages = SMALL_TILES if max_pairs <= SMALL_TILES[0] else LARGE_TILES
    while n_embd % (nb * 32) or n_ff % (nb * 32):
        nb //= 2
    return bt, bn, nb, warps, stages


@triton.jit
def _w_tile(ww, row_off, k0, QTYPE: tl.constexpr, NB: tl.constexpr, FP16: tl.constexpr):
    """Weights of rows at byte offsets row_off [BN] (int64, even), columns k0 .. k0 + NB*32, read
    as int16 words: a tile [BN, NB*32] in word order (Q4_0: `byte_order`; Q8_0: natural), fp16
    with FP16, else float32. fp16 dequantization is exact to the same rounding as float32's
    followed by a cast: q - 8 and the int8 values are exact in fp16, and one correctly rounded
    product is the same number either way."""
    blk = k0 // 32 + tl.arange(0, NB)  # [NB]
    if QTYPE == 2:  # Q4_0: 9 words a block: the fp16 scale, then 8 words of nibbles
        wi = row_off[:, None] // 2 + blk[None, :] * 9  # [BN, NB] word index of each block's scale
        j = tl.arange(0, 8)
        w = tl.load(ww + wi[:, :, None] + 1 + j[None, None, :])  # [BN, NB, 8] int16: byte 2j | byte 2j+1 << 8
        n0 = w & 15  # column 2j
        n1 = (w >> 4) & 15  # column 2j + 16
        n2 = (w >> 8) & 15  # column 2j + 1
        n3 = (w >> 12) & 15  # column 2j + 17 (& 15 undoes the arithmetic shift's sign)
        n = tl.join(tl.join(n0, n2), tl.join(n1, n3))  # [BN, NB, 8, 2, 2]: flat 4j + 2s + t <- n0 n1 n2 n3
        if FP16:
            # 0x6400 | n is the fp16 number 1024 + n: nibbles become halves without a conversion
            v = (n | 0x6400).to(tl.float16, bitcast=True) - 1032.0
        else:
            v = n.to(tl.float32) - 8.0
        d = tl.load(ww + wi).to(tl.float16, bitcast=True)  # [BN, NB]
        if not FP16:
            d = d.to(tl.float32)
        v = v * d[:, :, None, None, None]
    else:  # Q8_0: 17 words a block: the fp16 scale, then 16 words of int8 pairs
        wi = row_off[:, None] // 2 + blk[None, :] * 17
        j = tl.arange(0, 16)
        w = tl.load(ww + wi[:, :, None] + 1 + j[None, None, :])  # [BN, NB, 16] int16: column 2j low byte, 2j+1 high
        v = tl.join(w.to(tl.int8), (w >> 8).to(tl.int8))  # [BN, NB, 16, 2] (int16 -> int8 keeps the low byte)
        d = tl.load(ww + wi).to(tl.float16, bitcast=True)
        if FP16:
            v = v.to(tl.float16)
        else:
            v = v.to(tl.float32)
            d = d.to(tl.float32)
        v = v * d[:, :, None, None]
    return tl.reshape(v, [row_off.shape[0], NB * 32])


@triton.jit
def _dot(a, w, FP16: tl.constexpr):
    """a [BT, BK] @ w[BN, BK]^T in fp32: fp16 tensor cores, or exact fp32 (tests, fp32 models)."""
    if FP16:
        return tl.dot(a.to(tl.float16), tl.trans(w))
    return tl.dot(a, tl.trans(w), input_precision="ieee")


@triton.jit
def _grouped_glu_kernel(ww, tile_off, tile_start, tile_count, pair_tok, x_ptr, act_ptr,
                        N, K: tl.constexpr, row_bytes, x_stride, act_stride, n_tiles,
                        QTYPE: tl.constexpr, ACT_PERM: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
                        NB: tl.constexpr, FP16: tl.constexpr):
    """act[p, n] = silu(G x)[n] * (U x)[n] for the tile's pairs p [BT], rows n [BN]; x [T, K]
    already in the gate's column order; act [P, N] written in the down weights' column order
    (ACT_PERM: Q4_0's `byte_order` within each 32 columns; BN a multiple of 32)."""
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
    kk = tl.arange(0, NB * 32)
    acc_g = tl.zeros((BT, BN), dtype=tl.float32)
    acc_u = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, K, NB * 32):
        wg = _w_tile(ww, g_off + rows_c * row_bytes, k0, QTYPE, NB, FP16)  # [BN, NB*32]
        wu = _w_tile(ww, u_off + rows_c * row_bytes, k0, QTYPE, NB, FP16)
        xa = tl.load(x_ptr + tok[:, None] * x_stride + (k0 + kk)[None, :], mask=pmask[:, None], other=0.0)
        acc_g += _dot(xa, wg, FP16)
        acc_u += _dot(xa, wu, FP16)
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up, [BT, BN] natural columns
    if ACT_PERM:  # position 2j + s of each 32 columns <- column 16s + j
        act = tl.reshape(tl.permute(tl.reshape(act, [BT, BN // 32, 2, 16]), (0, 1, 3, 2)), [BT, BN])
    ptr = act_ptr + (start + pi).to(tl.int64)[:, None] * act_stride + rows[None, :]
    tl.store(ptr, act.to(act_ptr.dtype.element_ty), mask=pmask[:, None] & (rows < N)[None, :])


@triton.jit
def _grouped_down_kernel(ww, tile_off, tile_start, tile_count, pair_tok, pair_widx, w_ptr, act_ptr, y_ptr,
                         N, K: tl.constexpr, row_bytes, act_stride, y_stride, n_tiles,
                         QTYPE: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr,
                         FP16: tl.constexpr):
    """y[tok_p, n] += w_p * (D act[p])[n], atomically; act [P, K] in D's column order."""
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
    kk = tl.arange(0, NB * 32)
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, K, NB * 32):
        wd = _w_tile(ww, d_off + rows_c * row_bytes, k0, QTYPE, NB, FP16)
        a = tl.load(act_ptr + p[:, None] * act_stride + (k0 + kk)[None, :], mask=pmask[:, None], other=0.0)
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
    # scatter_add, not bincount: CUDA's bincount reads the ids' max on the host (a sync per layer)
    counts = torch.zeros(n_expert, dtype=flat.dtype, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
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


def grouped_ffn(words: torch.Tensor, gate_type: int, down_type: int, n_embd: int, n_ff: int,
                row_bytes_in: int, row_bytes_down: int, tile_off: torch.Tensor, tile_start: torch.Tensor,
                tile_count: torch.Tensor, pair_tok: torch.Tensor, pair_widx: torch.Tensor, weights: torch.Tensor,
                x: torch.Tensor, y: torch.Tensor, bt: int = BT, bn: int = BN, nb: int = NB, warps: int = WARPS,
                stages: int = STAGES) -> None:
    """y [T, E] fp32 += sum over pairs of weights[widx_p] * FFN_{slot_p}(x[tok_p]).

    words: the weight buffer's int16 view (QuantBuffer.words; every matrix at an even byte
    offset). tile_off: int64 [3, n_tiles] byte offsets of each tile's gate, up and down;
    tile_start, tile_count: int32 [n_tiles]; pair_tok: int32 [P], pair_widx: int64 [P] (into
    the flat `weights`); x [T, E] fp16/bf16/fp32. bt must be at least the tables' largest
    tile_count (tile_table's bt); bn a multiple of 32; nb * 32 must divide n_embd and n_ff
    (`tile_config`); warps, stages: Triton's num_warps, num_stages."""
    n_tiles, n_pairs = tile_start.shape[0], pair_tok.shape[0]
    if n_tiles == 0:
        return
    assert {gate_type, down_type} <= GROUPED_TYPES, f"types {gate_type}, {down_type}: Q4_0 / Q8_0 only"
    assert bn % 32 == 0, f"bn {bn}: a multiple of 32 (act is permuted per 32 columns)"
    assert n_embd % (nb * 32) == 0 and n_ff % (nb * 32) == 0, f"nb {nb}: no masking in K"
    fp16 = x.dtype != torch.float32
    if x.dtype == torch.bfloat16:  # the dots are fp16 x fp16: Triton on the H100 would not mix bf16 in (normed
        x = x.to(torch.float16)    # activations are far inside fp16's range)
    xp = x.index_select(1, byte_order(n_embd, x.device)) if gate_type == Q4_0 else x.contiguous()  # [T, E]
    act = torch.empty((n_pairs, n_ff), dtype=torch.float16 if fp16 else torch.float32, device=x.device)
    _grouped_glu_kernel[(n_tiles, triton.cdiv(n_ff, bn))](
        words, tile_off, tile_start, tile_count, pair_tok, xp, act,
        n_ff, n_embd, row_bytes_in, xp.stride(0), act.stride(0), n_tiles,
        QTYPE=gate_type, ACT_PERM=down_type == Q4_0, BT=bt, BN=bn, NB=nb, FP16=fp16,
        num_warps=warps, num_stages=stages)
    _grouped_down_kernel[(n_tiles, triton.cdiv(n_embd, bn))](
        words, tile_off, tile_start, tile_count, pair_tok, pair_widx, weights, act, y,
        n_embd, n_ff, row_bytes_down, act.stride(0), y.stride(0), n_tiles,
        QTYPE=down_type, BT=bt, BN=bn, NB=nb, FP16=fp16, num_warps=warps, num_stages=stages)
