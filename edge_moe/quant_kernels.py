"""Triton kernels that compute from weights kept in their GGUF block formats on the GPU.

A quantized matrix [N, K] (N rows of K weights, ggml's row-major order) is a run of
`row_bytes` bytes per row inside one flat uint8 tensor (the expert cache's slot storage or
a dense weight). Kernels read it through two views of the same memory: bytes (uint8) and
16-bit words (int16; every block format here keeps its fp16 scales 2-byte aligned).

Kernels (one launch each, over every (token, expert) pair of a layer):

    _matvec_kernel, MODE_GLU:     act[p] = silu(A_p @ x[tok_p]) * (B_p @ x[tok_p])   gate+up   [P, N]
    _matvec_kernel, MODE_SCATTER: y[out_p] += scale_p * (A_p @ x[p])                  down      [T, N] fp32
    _matvec_kernel, MODE_STORE:   out[p] = A_p @ x[tok_p]                             plain     [P, N]
    _dequant_kernel:              W fp16 [N, K] from its blocks (prefill: then torch matmul), or
                                  chosen rows of it (GATHER: a quantized token embedding)

Each program takes ROWS rows of one pair and walks K in steps. Q4_0, Q8_0, Q4_K, Q5_K and
Q6_K take x quantized to int8 in blocks of 32 (`_quantize_x_kernel`, ggml's Q8_0 rounding,
plus each block's sum) and multiply with `dp4a`: four int8 products per instruction, so the
kernel reads its bytes instead of waiting on ~6 float ops a weight, as the float kernels
before it did (llama.cpp's CUDA path quantizes x the same way for these formats). Where the
interpreter runs the kernels (no inline PTX), `_dp4a` computes the same sums in plain ints.
F16 and BF16 (and the dequantize kernel, every format) take float x: 256 weights a step by
byte gathers, accumulated elementwise in fp32 and reduced once at the end; integers become
floats by the 2**23 mantissa trick, not the (slow) convert unit.

The K-quant int8 dots (`_int8_dot_q4_k`, `_int8_dot_q6_k`) and the small helpers they share
with this module (`_fp16_bits`, `_dp4a`, `_scale_min_k4`) are in quant_kernels_k.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

# jitted callees resolve by name in this module's globals, hence the by-name import
from edge_moe.quant_kernels_k import _dp4a, _fp16_bits, _int8_dot_q4_k, _int8_dot_q6_k, _scale_min_k4

# ggml type ids (enum ggml_type)
F16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 1, 2, 8, 12, 13, 14, 30
# elements, bytes per block
BLOCKS: dict[int, tuple[int, int]] = {F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q8_0: (32, 34),
                                      Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
MODE_STORE, MODE_GLU, MODE_SCATTER = 0, 1, 2


# ---- per-format chunk loaders --------------------------------------------------------
# Each takes the rows' byte offsets [ROWS] (int64) and the chunk index c, and returns
# dequantized weights [ROWS, G, L] (G * L = 256) with their column indices [G, L].

@triton.jit
def _vals_f16(wb, ww, row, c, K, IS_BF16: tl.constexpr):
    col = c * 256 + tl.arange(0, 8)[:, None] * 32 + tl.arange(0, 32)[None, :]  # [8, 32]
    colc = tl.minimum(col, K - 1)
    w = tl.load(ww + row[:, None, None] // 2 + colc[None, :, :])
    if IS_BF16:
        v = ((w.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)
    else:
        v = _fp16_bits(w)
    return v, col


@triton.jit
def _vals_q4_0(wb, ww, row, c, K):
    j = tl.arange(0, 8)
    l = tl.arange(0, 32)
    blk = tl.minimum(c * 8 + j, K // 32 - 1)  # [8], clamped: columns past K get x = 0
    base = row[:, None] + blk[None, :] * 18  # [ROWS, 8]
    d = _fp16_bits(tl.load(ww + base // 2))
    q = tl.load(wb + base[:, :, None] + 2 + (l % 16)[None, None, :]).to(tl.int32)  # [ROWS, 8, 32]
    q = (q >> ((l // 16) * 4)[None, None, :]) & 15
    col = (c * 8 + j)[:, None] * 32 + l[None, :]
    return d[:, :, None] * (_u2f(q) - 8.0), col


@triton.jit
def _vals_q8_0(wb, ww, row, c, K):
    j = tl.arange(0, 8)
    l = tl.arange(0, 32)
    blk = tl.minimum(c * 8 + j, K // 32 - 1)
    base = row[:, None] + blk[None, :] * 34
    d = _fp16_bits(tl.load(ww + base // 2))
    q = tl.load(wb + base[:, :, None] + 2 + l[None, None, :]).to(tl.int8, bitcast=True).to(tl.float32)
    col = (c * 8 + j)[:, None] * 32 + l[None, :]
    return d[:, :, None] * q, col


@triton.jit
def _vals_q4_k(wb, ww, row, c, K, HIGH_BIT: tl.constexpr):
    """Q4_K (HIGH_BIT False) and Q5_K (True): 8 sub-blocks of 32 with 6-bit scales and mins."""
    j = tl.arange(0, 8)
    l = tl.arange(0, 32)
    if HIGH_BIT:
        base = row + c * 176
        qs_at = 48
    else:
        base = row + c * 144
        qs_at = 16
    d = _fp16_bits(tl.load(ww + base // 2))  # [ROWS]
    dmin = _fp16_bits(tl.load(ww + base // 2 + 1))
    sc, mn = _scale_min_k4(wb, (base + 4)[:, None], j[None, :])  # [ROWS, 8]
    q = tl.load(wb + base[:, None, None] + qs_at + ((j // 2) * 32)[None, :, None] + l[None, None, :]).to(tl.int32)
    q = (q >> ((j % 2) * 4)[None, :, None]) & 15  # [ROWS, 8, 32]
    if HIGH_BIT:
        qh = tl.load(wb + base[:, None, None] + 16 + l[None, None, :]).to(tl.int32)  # [ROWS, 1, 32]
        q = q | (((qh >> j[None, :, None]) & 1) << 4)
    v = (d[:, None] * sc)[:, :, None] * _u2f(q) - (dmin[:, None] * mn)[:, :, None]
    col = c * 256 + j[:, None] * 32 + l[None, :]
    return v, col


@triton.jit
def _vals_q6_k(wb, ww, row, c, K):
    """Q6_K: 16 groups s of 16 weights, each with an int8 scale; 4 low bits in ql, 2 high in qh."""
    s = tl.arange(0, 16)
    u = tl.arange(0, 16)
    base = row + c * 210  # [ROWS]
    half = (s // 8)[:, None]  # [16, 1]
    t = ((s % 8) // 2)[:, None]
    l = ((s % 2) * 16)[:, None] + u[None, :]  # [16, 16] position within the 32-wide run
    ql = tl.load(wb + base[:, None, None] + (half * 64 + (t % 2) * 32 + l)[None]).to(tl.int32)
    ql = (ql >> ((t // 2) * 4)[None]) & 15
    qh = tl.load(wb + base[:, None, None] + (128 + half * 32 + l)[None]).to(tl.int32)
    qh = (qh >> (t * 2)[None]) & 3
    q = _u2f(ql | (qh << 4)) - 32.0  # [ROWS, 16, 16]
    sc = tl.load(wb + base[:, None] + 192 + s[None, :]).to(tl.int8, bitcast=True).to(tl.float32)  # [ROWS, 16]
    d = _fp16_bits(tl.load(ww + (base + 208) // 2))
    col = c * 256 + s[:, None] * 16 + u[None, :]
    return (d[:, None] * sc)[:, :, None] * q, col


@triton.jit
def _chunk_vals(wb, ww, row, c, K, QTYPE: tl.constexpr):
    if QTYPE == 2:
        v, col = _vals_q4_0(wb, ww, row, c, K)
    elif QTYPE == 8:
        v, col = _vals_q8_0(wb, ww, row, c, K)
    elif QTYPE == 12:
        v, col = _vals_q4_k(wb, ww, row, c, K, False)
    elif QTYPE == 13:
        v, col = _vals_q4_k(wb, ww, row, c, K, True)
    elif QTYPE == 14:
        v, col = _vals_q6_k(wb, ww, row, c, K)
    elif QTYPE == 30:
        v, col = _vals_f16(wb, ww, row, c, K, True)
    else:
        v, col = _vals_f16(wb, ww, row, c, K, False)
    return v, col


# ---- word-wise dot products for the formats that dominate decode ----------------------

@triton.jit
def _u2f(q):
    """Small non-negative int32 (< 2**23) to float32 without the slow int->float convert:
    put q in the mantissa of 2**23 and subtract 2**23 (the convert unit was the bottleneck)."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


# ---- int8 dot products (x quantized to Q8_0-style blocks) ------------------------------

@triton.jit
def _qs_words(ww, word0, m):
    """int32 words m of block quants starting at 16-bit word index word0 [ROWS, NBLK]: the
    blocks are only 2-byte aligned, so each int32 is put together from two 16-bit loads."""
    at = word0[:, :, None] + 2 * m[None, None, :]
    lo = tl.load(ww + at).to(tl.int32) & 0xFFFF
    hi = tl.load(ww + at + 1).to(tl.int32)
    return lo | (hi << 16)  # [ROWS, NBLK, len(m)]


@triton.jit
def _q4_0_dots(ww, base, x_lo, x_hi, ASM: tl.constexpr):
    """Integer dots of Q4_0 blocks (16-bit word index of each block [ROWS, NBLK]) with int8 x
    as words x_lo = x[4m .. 4m+3], x_hi = x[16+4m ..] [NBLK, 4] -> int32 [ROWS, NBLK]. A block's
    byte i holds weight i (low nibble) and i + 16 (high); nibbles are taken unsigned (the -8
    offset is the caller's: scale * sum(x))."""
    q = _qs_words(ww, base + 1, tl.arange(0, 4))  # [ROWS, NBLK, 4]
    zero = tl.zeros(q.shape, tl.int32)
    s = _dp4a(q & 0x0F0F0F0F, x_lo[None, :, :] + zero, zero, ASM)
    s = _dp4a((q >> 4) & 0x0F0F0F0F, x_hi[None, :, :] + zero, s, ASM)
    return tl.sum(s, axis=2)


@triton.jit
def _q8_0_dots(ww, base, xw, ASM: tl.constexpr):
    """Integer dots of Q8_0 blocks (word index [ROWS, NBLK]) with int8 x words [NBLK, 8]."""
    q = _qs_words(ww, base + 1, tl.arange(0, 8))  # [ROWS, NBLK, 8]
    zero = tl.zeros(q.shape, tl.int32)
    return tl.sum(_dp4a(q, xw[None, :, :] + zero, zero, ASM), axis=2)


@triton.jit
def _int8_dot(ww, row, xq, xd, xs, c, K, QTYPE: tl.constexpr, NBLK: tl.constexpr, ASM: tl.constexpr):
    """Per-block dot of the rows [ROWS] with the int8 x of blocks c*NBLK.. -> [ROWS, NBLK] fp32.
    xq: x as int32 words (4 int8 each, natural order), xd: each block's scale, xs: its scale
    times the sum of its int8 values (Q4_0's -8 offset)."""
    j = c * NBLK + tl.arange(0, NBLK)
    valid = j < K // 32
    jc = tl.minimum(j, K // 32 - 1)
    if QTYPE == 2:  # Q4_0: 18-byte blocks; byte i holds weight i (low nibble) and i + 16 (high)
        m = tl.arange(0, 4)
        base = row[:, None] // 2 + jc[None, :] * 9  # 16-bit word index [ROWS, NBLK]
        x_lo = tl.load(xq + jc[:, None] * 8 + m[None, :])  # [NBLK, 4] x[4m .. 4m+3]
        x_hi = tl.load(xq + jc[:, None] * 8 + 4 + m[None, :])  # x[16+4m ..]
        dot = _q4_0_dots(ww, base, x_lo, x_hi, ASM).to(tl.float32)  # [ROWS, NBLK]
        dx = tl.load(xd + jc)
        r = _fp16_bits(tl.load(ww + base)) * (dot * dx[None, :] - 8.0 * tl.load(xs + jc)[None, :])
    else:  # Q8_0: 34-byte blocks of 32 int8
        base = row[:, None] // 2 + jc[None, :] * 17
        xw = tl.load(xq + jc[:, None] * 8 + tl.arange(0, 8)[None, :])  # [NBLK, 8]
        dot = _q8_0_dots(ww, base, xw, ASM).to(tl.float32)
        r = _fp16_bits(tl.load(ww + base)) * (dot * tl.load(xd + jc)[None, :])
    return tl.where(valid[None, :], r, 0.0)


@triton.jit
def _int8_row_dots(wb, ww, row, xq, xd, xs, K: tl.constexpr, QTYPE: tl.constexpr, NBLK: tl.constexpr,
                   ASM: tl.constexpr):
    """Dot of each row [ROWS] with the int8 x: per-block terms accumulate over the steps of
    NBLK blocks (K-quants: NBLK // 8 super-blocks) and are reduced once at the end."""
    if QTYPE == 12 or QTYPE == 13:  # (one function per shape: Triton wants one return type per function)
        acc = _int8_dot_q4_k(wb, ww, row, xq, xd, xs, 0, K, NBLK // 8, QTYPE == 13, ASM)
        for c in range(1, (K // 32 + NBLK - 1) // NBLK):
            acc += _int8_dot_q4_k(wb, ww, row, xq, xd, xs, c, K, NBLK // 8, QTYPE == 13, ASM)
        out = tl.sum(acc, axis=1)
    elif QTYPE == 14:
        acc = _int8_dot_q6_k(wb, ww, row, xq, xd, 0, K, NBLK // 8, ASM)
        for c in range(1, (K // 32 + NBLK - 1) // NBLK):
            acc += _int8_dot_q6_k(wb, ww, row, xq, xd, c, K, NBLK // 8, ASM)
        out = tl.sum(acc, axis=1)
    else:
        acc = _int8_dot(ww, row, xq, xd, xs, 0, K, QTYPE, NBLK, ASM)
        for c in range(1, (K // 32 + NBLK - 1) // NBLK):
            acc += _int8_dot(ww, row, xq, xd, xs, c, K, QTYPE, NBLK, ASM)
        out = tl.sum(acc, axis=1)
    return out


@triton.jit
def _q8_blocks(v):
    """float32 [NB, 32] -> (int values [NB, 32] as float32, scales [NB] rounded to fp16): ggml's
    Q8_0 rounding (d = amax / 127, q = round half away from zero of x / d)."""
    d = tl.max(tl.abs(v), axis=1) / 127.0
    inv = tl.where(d > 0.0, 1.0 / tl.maximum(d, 1e-30), 0.0)
    a = v * inv[:, None]
    q = tl.where(a >= 0.0, tl.floor(a + 0.5), -tl.floor(0.5 - a))
    return q, d.to(tl.float16).to(tl.float32)


@triton.jit
def _quantize_x_kernel(x_ptr, x_stride, q_ptr, d_ptr, s_ptr, K, NB: tl.constexpr):
    """Row t of x [T, K] -> int8 q [T, K], scales d [T, K/32] and d * sum(q) [T, K/32], ggml's
    Q8_0 rounding (d = amax / 127 kept as fp16, q = round half away from zero of x / d)."""
    t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) * NB + tl.arange(0, NB)
    bmask = b < K // 32
    col = b[:, None] * 32 + tl.arange(0, 32)[None, :]  # [NB, 32]
    v = tl.load(x_ptr + t * x_stride + col, mask=bmask[:, None], other=0.0).to(tl.float32)
    q, d16 = _q8_blocks(v)
    tl.store(q_ptr + t * K + col, q.to(tl.int8), mask=bmask[:, None])
    tl.store(d_ptr + t * (K // 32) + b, d16, mask=bmask)
    tl.store(s_ptr + t * (K // 32) + b, d16 * tl.sum(q, axis=1), mask=bmask)


@triton.jit
def _row_dots(wb, ww, row, xp, K: tl.constexpr, QTYPE: tl.constexpr, ROWS: tl.constexpr):
    """Dot of each row [ROWS] with float x, 256 weights a step: terms accumulate in their own
    shape over the steps and are reduced once at the end (reducing every step cost more than
    the dequantization)."""
    v, col = _chunk_vals(wb, ww, row, 0, K, QTYPE)
    acc = v * tl.load(xp + col, mask=col < K, other=0.0).to(tl.float32)[None]
    for c in range(1, (K + 255) // 256):
        v, col = _chunk_vals(wb, ww, row, c, K, QTYPE)
        acc += v * tl.load(xp + col, mask=col < K, other=0.0).to(tl.float32)[None]
    return tl.sum(tl.reshape(acc, [ROWS, 256]), axis=1)


# ---- kernels ---------------------------------------------------------------------------

@triton.jit
def _matvec_kernel(wb, ww, a_off, b_off, x_ptr, xd_ptr, xs_ptr, x_row, scale_ptr, scale_idx, out_ptr, out_row,
                   N, K: tl.constexpr, row_bytes, x_stride, out_stride,
                   QTYPE: tl.constexpr, MODE: tl.constexpr, ROWS: tl.constexpr, NBLK: tl.constexpr,
                   INT8_X: tl.constexpr, ASM: tl.constexpr):
    """INT8_X: x_ptr is x quantized (int32 words, `_quantize_x_kernel`) with block scales at
    xd_ptr and scaled sums at xs_ptr (x_stride in words; scales have K // 32 a row)."""
    p = tl.program_id(1)  # pairs on axis 1 (<= 65535), rows on axis 0 (a vocabulary's rows exceed that)
    a_base = tl.load(a_off + p)
    if a_base == -1:  # a padded pair (a miss in a fixed-size pair table, edge_moe/decode_graphs.py); exactly -1:
        return  # real offsets are even, and may be negative (host memory below the buffer, read in place)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    rows_c = tl.minimum(rows, N - 1).to(tl.int64)  # rows past N read row N-1; never stored
    if MODE == 2:  # down: act row p belongs to pair p
        xr = p.to(tl.int64)
    else:
        xr = tl.load(x_row + p).to(tl.int64)
    xp = x_ptr + xr * x_stride
    xd = xd_ptr + xr * (K // 32)
    xs = xs_ptr + xr * (K // 32)
    a_row = a_base + rows_c * row_bytes
    if INT8_X:
        acc = _int8_row_dots(wb, ww, a_row, xp, xd, xs, K, QTYPE, NBLK, ASM)
    else:
        acc = _row_dots(wb, ww, a_row, xp, K, QTYPE, ROWS)
    if MODE == 1:
        b_row = tl.load(b_off + p) + rows_c * row_bytes
        if INT8_X:
            acc_b = _int8_row_dots(wb, ww, b_row, xp, xd, xs, K, QTYPE, NBLK, ASM)
        else:
            acc_b = _row_dots(wb, ww, b_row, xp, K, QTYPE, ROWS)
    if MODE == 1:
        act = acc / (1.0 + tl.exp(-acc)) * acc_b  # silu(gate) * up
        tl.store(out_ptr + p * out_stride + rows, act, mask=rmask)
    elif MODE == 2:
        s = tl.load(scale_ptr + tl.load(scale_idx + p)).to(tl.float32)
        o = tl.load(out_row + p).to(tl.int64)
        # relaxed: a pure sum, no ordering needed inside the launch (the default acq_rel
        # fences each add; relaxed measured 24.5 -> 22.0 us a Qwen3 layer, session 7)
        tl.atomic_add(out_ptr + o * out_stride + rows, acc * s, mask=rmask, sem="relaxed")
    else:
        tl.store(out_ptr + p * out_stride + rows, acc, mask=rmask)


@triton.jit
def _dequant_kernel(wb, ww, w_off, row_idx, out_ptr, N, K: tl.constexpr, row_bytes,
                    QTYPE: tl.constexpr, ROWS: tl.constexpr, GATHER: tl.constexpr):
    """out[r] = row r of the matrix at w_off, or with GATHER row row_idx[r] (embedding lookups)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.program_id(1)
    rmask = rows < N
    src = tl.minimum(rows, N - 1)
    if GATHER:
        src = tl.load(row_idx + src)
    row = w_off + src.to(tl.int64) * row_bytes
    v, col = _chunk_vals(wb, ww, row, c, K, QTYPE)
    ptr = out_ptr + rows.to(tl.int64)[:, None, None] * K + col[None]
    tl.store(ptr, v.to(out_ptr.dtype.element_ty), mask=rmask[:, None, None] & (col < K)[None])
