"""One launch for a decode layer's cached experts: gate, up, SiLU and down of every (token,
expert) pair, split over the expert's hidden dimension.

The two-launch path (quant_ops.glu_pairs, then scatter_pairs) takes four dependent kernels a
layer on the int8 formats (quantize x, gate+up, quantize act, down). For experts as small
as Qwen3-30B-A3B's (E 2048, F 768: 2.6 MB in Q4_0) the launches and their tails cost more
than the bytes: the layer ran at 0.30 of the fp16 GEMV bandwidth (session 5). Here program
(c, p) owns hidden block c (32 of the F rows) of pair p:

    x_q   = Q8_0(x[tok_p])                        in registers, per step of NBLK blocks
    act_c = silu(G_p[c] x_q) * (U_p[c] x_q) * w_p   [32]    gate/up rows 32c .. 32c+31 (dp4a)
    y[tok_p] += D_p[:, c] act_c                   [E]     column block c of down, fp32 atomics

so each weight byte is still read once, x's quantization is recomputed per program from L2
(4 KB against ~110 KB of weights per program at the Qwen3 shape), and act never leaves
registers (so down multiplies it unquantized). The cost moved elsewhere: E atomic adds per
program (F/32 programs add into each row of y).

Types: Q4_0 and Q8_0 for gate, up and down alike (the formats of the int8 kernels whose
blocks are 32 wide); other layouts keep the two-launch path.

Status: correct (tests/test_fused_ffn.py) but slower than the two-launch path on the H100, so
off by default (FUSED_MAX_FF); see the figures there.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from edge_moe.quant_kernels import Q4_0, Q8_0, _fp16_bits, _q4_0_dots, _q8_0_dots, _q8_blocks, _u2f
from edge_moe.quant_ops import QuantBuffer, QuantMatrix

FUSED_TYPES = frozenset({Q4_0, Q8_0})
# Warps per program, x blocks per gate/up step (at most), down rows per step. Chosen on the H100
# with benchmarks/quant_kernels_bench.py; EDGE_MOE_FFN_WARPS / _NBLK / _DROWS override them.
FFN_WARPS = int(os.environ.get("EDGE_MOE_FFN_WARPS", "4"))
FFN_NBLK = int(os.environ.get("EDGE_MOE_FFN_NBLK", "16"))
FFN_DROWS = int(os.environ.get("EDGE_MOE_FFN_DROWS", "256"))
# Hidden sizes up to this take the fused kernel by default (fused_for). 0: never, because on the
# H100 (session 7, benchmarks/quant_kernels_bench.py, Q4_0, GPU time of a graph-replayed layer)
# it is slower than the two-launch path: Qwen3 shape 88.5 us against 24.5, Mixtral 526 against
# 80. Its time is not in the atomics (plain stores instead: 84 us) but in its few, long programs
# (F/32 per pair: 192 at the Qwen3 shape): the gate/up phase alone ran ~48 us and more warps
# per program made it slower. Kept, tested and opt-in (EDGE_MOE_FUSED_FFN=1) for that work.
FUSED_MAX_FF = 0


@triton.jit
def _x_words(v, NBLK: tl.constexpr):
    """float32 x [NBLK, 32] -> Q8_0 int8 values packed 4 a word [NBLK, 8] (natural order),
    block scales [NBLK] and scale * sum(q) [NBLK]."""
    q, d = _q8_blocks(v)
    qi = q.to(tl.int32)
    b = tl.reshape(qi & 255, [NBLK, 8, 4])
    words = tl.sum(b << (tl.arange(0, 4) * 8)[None, None, :], axis=2)  # disjoint bytes: sum == or
    return words, d, d * tl.sum(q, axis=1)


@triton.jit
def _halves(w, NBLK: tl.constexpr):
    """Words [NBLK, 8] -> (words 0..3, words 4..7): x[0..15] and x[16..31] of each block."""
    w3 = tl.reshape(w, [NBLK, 2, 4])
    h = tl.arange(0, 2)[None, :, None]
    return tl.sum(tl.where(h == 0, w3, 0), axis=1), tl.sum(tl.where(h == 1, w3, 0), axis=1)


@triton.jit
def _gate_up_step(ww, g_row, u_row, xp, step, QTYPE: tl.constexpr, NBLK: tl.constexpr, ASM: tl.constexpr):
    """Per-block terms [32, NBLK] of the gate and up rows (byte offsets [32]) for x blocks
    step*NBLK .. step*NBLK + NBLK - 1."""
    blk = step * NBLK + tl.arange(0, NBLK)
    v = tl.load(xp + blk[:, None] * 32 + tl.arange(0, 32)[None, :]).to(tl.float32)  # [NBLK, 32]
    xw, xd, xs = _x_words(v, NBLK)
    if QTYPE == 2:  # Q4_0: 9 words a block; nibbles unsigned, so subtract 8 * scale * sum(x)
        x_lo, x_hi = _halves(xw, NBLK)
        gb = g_row[:, None] // 2 + blk[None, :] * 9
        ub = u_row[:, None] // 2 + blk[None, :] * 9
        g = _fp16_bits(tl.load(ww + gb)) * (_q4_0_dots(ww, gb, x_lo, x_hi, ASM).to(tl.float32) * xd[None, :]
                                            - 8.0 * xs[None, :])
        u = _fp16_bits(tl.load(ww + ub)) * (_q4_0_dots(ww, ub, x_lo, x_hi, ASM).to(tl.float32) * xd[None, :]
                                            - 8.0 * xs[None, :])
    else:  # Q8_0: 17 words a block
        gb = g_row[:, None] // 2 + blk[None, :] * 17
        ub = u_row[:, None] // 2 + blk[None, :] * 17
        g = _fp16_bits(tl.load(ww + gb)) * (_q8_0_dots(ww, gb, xw, ASM).to(tl.float32) * xd[None, :])
        u = _fp16_bits(tl.load(ww + ub)) * (_q8_0_dots(ww, ub, xw, ASM).to(tl.float32) * xd[None, :])
    return g, u


@triton.jit
def _down_rows(ww, d_base, c, r, rmask, act, down_row_bytes, QTYPE: tl.constexpr, DROWS: tl.constexpr):
    """D[r, 32c .. 32c+31] . act for rows r [DROWS] -> [DROWS] fp32 (act [32], float)."""
    if QTYPE == 2:
        base = (d_base + r * down_row_bytes + c * 18) // 2  # word index of each row's block c
        w16 = tl.load(ww + base[:, None] + 1 + tl.arange(0, 8)[None, :], mask=rmask[:, None], other=0)
        b = ((w16.to(tl.int32) & 0xFFFF)[:, :, None] >> (tl.arange(0, 2) * 8)[None, None, :]) & 255  # byte 2i+t
        a3 = tl.reshape(act, [2, 8, 2])  # [half, i, t] = act[16 * half + 2i + t]
        half = tl.arange(0, 2)[:, None, None]
        a_lo = tl.sum(tl.where(half == 0, a3, 0.0), axis=0)  # columns 2i + t: low nibbles
        a_hi = tl.sum(tl.where(half == 1, a3, 0.0), axis=0)  # columns 16 + 2i + t: high nibbles
        t = _u2f(b & 15) * a_lo[None] + _u2f(b >> 4) * a_hi[None]  # [DROWS, 8, 2]
        dot = tl.sum(tl.sum(t, axis=2), axis=1) - 8.0 * tl.sum(act, axis=0)
    else:
        base = (d_base + r * down_row_bytes + c * 34) // 2
        w16 = tl.load(ww + base[:, None] + 1 + tl.arange(0, 16)[None, :], mask=rmask[:, None], other=0)
        b = (w16.to(tl.int32)[:, :, None] << (24 - tl.arange(0, 2) * 8)[None, None, :]) >> 24  # signed byte 2i+t
        t = b.to(tl.float32) * tl.reshape(act, [16, 2])[None]
        dot = tl.sum(tl.sum(t, axis=2), axis=1)
    return _fp16_bits(tl.load(ww + base, mask=rmask, other=0)) * dot


@triton.jit
def _fused_ffn_kernel(wb, ww, pairs, n_pairs, x_ptr, x_stride, w_ptr, y_ptr, y_stride,
                      E: tl.constexpr, in_row_bytes, down_row_bytes,
                      QTYPE: tl.constexpr, NSTEP: tl.constexpr, NBLK: tl.constexpr, DROWS: tl.constexpr,
                      ASM: tl.constexpr):
    c = tl.program_id(0)  # hidden block: gate/up rows 32c .. 32c+31, down columns the same
    p = tl.program_id(1)
    g_base = tl.load(pairs + p)
    if g_base == -1:  # a miss in the fixed-size pair table (computed on the CPU); exactly -1, as _matvec_kernel
        return
    u_base = tl.load(pairs + n_pairs + p)
    d_base = tl.load(pairs + 2 * n_pairs + p)
    tok = tl.load(pairs + 3 * n_pairs + p)
    w = tl.load(w_ptr + tl.load(pairs + 4 * n_pairs + p)).to(tl.float32)
    rows = (c * 32 + tl.arange(0, 32)).to(tl.int64)
    g_row = g_base + rows * in_row_bytes
    u_row = u_base + rows * in_row_bytes
    xp = x_ptr + tok * x_stride
    acc_g, acc_u = _gate_up_step(ww, g_row, u_row, xp, 0, QTYPE, NBLK, ASM)  # [32, NBLK]
    for step in range(1, NSTEP):
        g, u = _gate_up_step(ww, g_row, u_row, xp, step, QTYPE, NBLK, ASM)
        acc_g += g
        acc_u += u
    gate = tl.sum(acc_g, axis=1)
    act = gate / (1.0 + tl.exp(-gate)) * tl.sum(acc_u, axis=1) * w  # [32], routing weight folded in
    yp = y_ptr + tok * y_stride
    for r0 in range(0, E, DROWS):
        r = r0 + tl.arange(0, DROWS)
        rmask = r < E
        tl.atomic_add(yp + r, _down_rows(ww, d_base, c, r.to(tl.int64), rmask, act, down_row_bytes, QTYPE, DROWS),
                      mask=rmask, sem="relaxed")


def fused_supported(gate: QuantMatrix, up: QuantMatrix, down: QuantMatrix) -> bool:
    """Whether a layer's expert layouts take the fused kernel."""
    return (gate == up and gate.ggml_type == down.ggml_type and gate.ggml_type in FUSED_TYPES
            and down.n_rows == gate.n_cols and down.n_cols == gate.n_rows)


def fused_for(gate: QuantMatrix, up: QuantMatrix, down: QuantMatrix) -> bool:
    """Whether decode runs a layer's hits through the fused kernel: supported layouts, experts
    small enough that the two-launch path's launches dominate (FUSED_MAX_FF; big experts
    spend their time on bytes, and here they would pay F/32 atomic adds per row of y).
    EDGE_MOE_FUSED_FFN=1 / 0 forces it on (where supported) / off."""
    forced = os.environ.get("EDGE_MOE_FUSED_FFN", "auto")
    if forced not in ("auto", "0", "1"):
        raise ValueError(f"EDGE_MOE_FUSED_FFN={forced!r}: use auto, 0 or 1")
    if forced == "0" or not fused_supported(gate, up, down):
        return False
    return forced == "1" or gate.n_rows <= FUSED_MAX_FF


def _pow2_divisor(n: int, cap: int) -> int:
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d


def fused_ffn_pairs(buf: QuantBuffer, gate: QuantMatrix, down: QuantMatrix, pairs: torch.Tensor,
                    x: torch.Tensor, weights: torch.Tensor, y: torch.Tensor) -> None:
    """y[tok_p] += weights[idx_p] * D_p (silu(G_p x[tok_p]) * U_p x[tok_p]) for every pair of the
    table pairs: int64 [5, P] (gpu_experts.pair_table: gate, up, down byte offsets, -1 for a
    skipped pair; token row; index into the flat weights). x [T, E] contiguous rows; y float32
    [T, E]. One launch."""
    if not fused_supported(gate, gate, down):
        raise ValueError(f"no fused kernel for gate {gate} / down {down}")
    if y.dtype != torch.float32 or x.stride(1) != 1 or pairs.dtype != torch.int64 or not pairs.is_contiguous():
        raise ValueError("fused_ffn_pairs needs float32 y, x rows contiguous and an int64 contiguous pair table")
    n_pairs = pairs.shape[1]
    if n_pairs == 0:
        return
    if n_pairs > 65535:
        raise ValueError(f"{n_pairs} pairs in one launch: at most 65535 (CUDA's grid)")
    e, n_blocks = gate.n_cols, gate.n_cols // 32
    nblk = _pow2_divisor(n_blocks, FFN_NBLK)
    _fused_ffn_kernel[(gate.n_rows // 32, n_pairs)](
        buf.bytes, buf.words, pairs, n_pairs, x, x.stride(0), weights, y, y.stride(0),
        e, gate.row_bytes, down.row_bytes,
        QTYPE=gate.ggml_type, NSTEP=n_blocks // nblk, NBLK=nblk, DROWS=min(FFN_DROWS, triton.next_power_of_2(e)),
        ASM=buf.device.type == "cuda", num_warps=FFN_WARPS)
