"""The K-quant int8 dot products of edge_moe/quant_kernels.py's matvec kernel: Q4_K / Q5_K
(`_int8_dot_q4_k`) and Q6_K (`_int8_dot_q6_k`), each one step of NSB super-blocks of rows
against x quantized to int8 (`_quantize_x_kernel`), multiplied with dp4a.

Kept apart only so that quant_kernels.py stays a readable size. The three small helpers they
call (`_fp16_bits`, `_dp4a`, `_scale_min_k4`) are shared with quant_kernels.py and live here
too, so the import runs one way (quant_kernels.py imports them from this module): Triton
resolves a jitted callee by name in the caller's module globals, and an import cycle would
fail for whichever module Python imported first.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fp16_bits(words):
    return words.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _dp4a(a, b, c, ASM: tl.constexpr):
    """c + the dot of the four signed bytes of a and of b (int32 tensors of one shape)."""
    if ASM:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        s = c
        for i in tl.static_range(4):
            s += ((a << (24 - 8 * i)) >> 24) * ((b << (24 - 8 * i)) >> 24)  # sign-extended byte i
        return s


@triton.jit
def _scale_min_k4(wb, sb, j):
    """The 6-bit scales and mins of sub-blocks j (0..7) from the 12 scale bytes at byte sb;
    sb and j broadcast against each other (the result has their common shape)."""
    qa = tl.load(wb + sb + j).to(tl.int32)  # q[j]
    qb = tl.load(wb + sb + j + 4).to(tl.int32)  # q[j + 4]
    qc = tl.load(wb + sb + tl.where(j >= 4, j - 4, j)).to(tl.int32)  # q[j - 4]
    lo = j < 4
    sc = tl.where(lo, qa & 63, (qb & 15) | ((qc >> 6) << 4))
    mn = tl.where(lo, qb & 63, (qb >> 4) | ((qa >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _int8_dot_q4_k(wb, ww, row, xq, xd, xs, c, K, NSB: tl.constexpr, HIGH_BIT: tl.constexpr, ASM: tl.constexpr):
    """Per-super-block dot of Q4_K (HIGH_BIT False) or Q5_K rows [ROWS] with int8 x -> [ROWS, NSB].
    Q4_K super-block (144 bytes): d, dmin (fp16), 12 bytes of 6-bit scales and mins, then 4 runs
    of 32 bytes: run j holds sub-block 2j in its low nibbles and 2j + 1 in its high ones. Q5_K
    (176 bytes) puts 32 bytes qh before the runs: bit i of qh[l] is the fifth bit of weight l of
    sub-block i. weight = d * sc * q - dmin * m, q unsigned (0..15 / 0..31): dp4a takes it as is."""
    sbk = c * NSB + tl.arange(0, NSB)
    valid = sbk < K // 256
    kc = tl.minimum(sbk, K // 256 - 1)
    jj = tl.arange(0, 4)
    w = tl.arange(0, 8)
    if HIGH_BIT:
        base = row[:, None] + kc[None, :] * 176  # byte offset [ROWS, NSB]
        qs_word = 24
    else:
        base = row[:, None] + kc[None, :] * 144
        qs_word = 8
    at = (base // 2 + qs_word)[:, :, None, None] + (jj * 16)[None, None, :, None] + (2 * w)[None, None, None, :]
    q = (tl.load(ww + at).to(tl.int32) & 0xFFFF) | (tl.load(ww + at + 1).to(tl.int32) << 16)  # [ROWS, NSB, 4, 8]
    q_lo = q & 0x0F0F0F0F
    q_hi = (q >> 4) & 0x0F0F0F0F
    if HIGH_BIT:
        at_h = (base // 2 + 8)[:, :, None, None] + (2 * w)[None, None, None, :]  # qh words [ROWS, NSB, 1, 8]
        qh = (tl.load(ww + at_h).to(tl.int32) & 0xFFFF) | (tl.load(ww + at_h + 1).to(tl.int32) << 16)
        q_lo = q_lo | (((qh >> (2 * jj)[None, None, :, None]) & 0x01010101) << 4)
        q_hi = q_hi | (((qh >> (2 * jj + 1)[None, None, :, None]) & 0x01010101) << 4)
    xb = kc[:, None] * 8 + 2 * jj[None, :]  # x block of sub-block 2j [NSB, 4]
    x_lo = tl.load(xq + xb[:, :, None] * 8 + w[None, None, :])  # [NSB, 4, 8]
    x_hi = tl.load(xq + (xb + 1)[:, :, None] * 8 + w[None, None, :])
    zero = tl.zeros(q.shape, tl.int32)
    s_lo = tl.sum(_dp4a(q_lo, x_lo[None] + zero, zero, ASM), axis=3).to(tl.float32)  # [ROWS, NSB, 4]
    s_hi = tl.sum(_dp4a(q_hi, x_hi[None] + zero, zero, ASM), axis=3).to(tl.float32)
    sb = (base + 4)[:, :, None]
    sc_lo, mn_lo = _scale_min_k4(wb, sb, (2 * jj)[None, None, :])  # [ROWS, NSB, 4]
    sc_hi, mn_hi = _scale_min_k4(wb, sb, (2 * jj + 1)[None, None, :])
    d = _fp16_bits(tl.load(ww + base // 2))[:, :, None]
    dmin = _fp16_bits(tl.load(ww + base // 2 + 1))[:, :, None]
    dot = sc_lo * s_lo * tl.load(xd + xb)[None] + sc_hi * s_hi * tl.load(xd + xb + 1)[None]
    offset = mn_lo * tl.load(xs + xb)[None] + mn_hi * tl.load(xs + xb + 1)[None]
    r = tl.sum(d * dot - dmin * offset, axis=2)  # [ROWS, NSB]
    return tl.where(valid[None, :], r, 0.0)


@triton.jit
def _int8_dot_q6_k(wb, ww, row, xq, xd, c, K, NSB: tl.constexpr, ASM: tl.constexpr):
    """Per-super-block dot of Q6_K rows [ROWS] with int8 x -> [ROWS, NSB]. Super-block (210
    bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales, d (fp16). Run r = 4h + t
    (x block r of the super-block, 32 weights l) takes nibble t // 2 of ql[64h + 32(t % 2) + l]
    and bits 2t, 2t + 1 of qh[32h + l]; weights l < 16 and l >= 16 have scales 2r and 2r + 1.
    weight = d * sc * (q - 32): the 6-bit q becomes the signed byte q - 32 four at a time,
    without borrows between bytes (top bit set first, then 32 subtracted, then the top bit flipped
    back), so dp4a needs no offset term."""
    sbk = c * NSB + tl.arange(0, NSB)
    valid = sbk < K // 256
    kc = tl.minimum(sbk, K // 256 - 1)
    r = tl.arange(0, 8)
    h = r // 4
    t = r % 4
    base = row[:, None] + kc[None, :] * 210  # byte offset [ROWS, NSB]
    xb = kc[:, None] * 8 + r[None, :]  # x block of run r [NSB, 8]
    acc = tl.zeros((base.shape[0], NSB, 8), dtype=tl.float32)
    for g in tl.static_range(2):  # the 16-weight halves of each run: one scale each
        w = g * 4 + tl.arange(0, 4)  # int32 words of the run's 32 bytes
        at_l = (base // 2)[:, :, None, None] + ((h * 32 + (t % 2) * 16)[:, None] + 2 * w[None, :])[None, None]
        ql = (tl.load(ww + at_l).to(tl.int32) & 0xFFFF) | (tl.load(ww + at_l + 1).to(tl.int32) << 16)
        at_h = (base // 2 + 64)[:, :, None, None] + ((h * 16)[:, None] + 2 * w[None, :])[None, None]
        qh = (tl.load(ww + at_h).to(tl.int32) & 0xFFFF) | (tl.load(ww + at_h + 1).to(tl.int32) << 16)
        q = ((ql >> (4 * (t // 2))[None, None, :, None]) & 0x0F0F0F0F) \
            | (((qh >> (2 * t)[None, None, :, None]) & 0x03030303) << 4)  # [ROWS, NSB, 8, 4], bytes 0..63
        # bytes q - 32 (signed); -2139062144 is 0x80808080 as an int32 (a global would need to be a constexpr)
        q = ((q | -2139062144) - 0x20202020) ^ -2139062144
        xw = tl.load(xq + xb[:, :, None] * 8 + w[None, None, :])  # [NSB, 8, 4]
        zero = tl.zeros(q.shape, tl.int32)
        s = tl.sum(_dp4a(q, xw[None] + zero, zero, ASM), axis=3).to(tl.float32)  # [ROWS, NSB, 8]
        sc = tl.load(wb + base[:, :, None] + 192 + (2 * r + g)[None, None, :]).to(tl.int8, bitcast=True)
        acc += sc.to(tl.float32) * s
    d = _fp16_bits(tl.load(ww + (base + 208) // 2))  # [ROWS, NSB]
    out = tl.sum(acc * tl.load(xd + xb)[None], axis=2) * d
    return tl.where(valid[None, :], out, 0.0)
