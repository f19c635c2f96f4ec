"""Residual add + RMSNorm in one Triton launch, for the fronts of the decode graphs.

A decode layer's front adds what the previous layer's experts left to the residual stream
(y_gpu and y_cpu in float32), norms the sum for attention, adds the attention
output and norms again for the FFN. In torch that is ~8 small kernels (a cast, the adds, two
norms, the copies into the graphs' static buffers), each ~2.5 us of GPU time at T = 1 whatever
its size, on the path every host layer waits for. Here it is two launches of:

    s = x (+ a) (+ b)       a and b rounded to x's dtype first and the sum after each add, as
                            the torch expression x + (a.to(dtype) + b.to(dtype)) does
    x_out = s;  h_out = s * rsqrt(mean(s^2) + eps) * w     (float32 inside, rounded once on store)
    h_q = Q8_0(h_out)       optional: h_out quantized as quant_ops.quantize_x does it (int8
                            values, block scales, scale * sum), for the int8 matvecs that read h
                            next (the layer's qkv, its experts): one quantizing launch less each
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from edge_moe.quant_kernels import _q8_blocks

if TYPE_CHECKING:
    from edge_moe.quant_ops import QuantizedX


@triton.jit
def _add_rms_norm_kernel(x, a, b, w, x_out, h_out, q_out, d_out, s_out, E, eps, HAS_A: tl.constexpr,
                         HAS_B: tl.constexpr, BLOCK: tl.constexpr, QUANT: tl.constexpr):
    row = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    m = i < E
    dt = x.dtype.element_ty
    s = tl.load(x + row * E + i, mask=m, other=0.0).to(tl.float32)
    if HAS_B:  # float32 (y_cpu): in the model dtype first, as .to(dtype) does
        y = tl.load(b + row * E + i, mask=m, other=0.0).to(dt).to(tl.float32)
        if HAS_A:
            y = (tl.load(a + row * E + i, mask=m, other=0.0).to(dt).to(tl.float32) + y).to(dt).to(tl.float32)
        s = (s + y).to(dt).to(tl.float32)
    elif HAS_A:
        s = (s + tl.load(a + row * E + i, mask=m, other=0.0).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    tl.store(x_out + row * E + i, s.to(x_out.dtype.element_ty), mask=m)
    scale = tl.rsqrt(tl.sum(s * s, axis=0) / E + eps)
    h = s * scale * tl.load(w + i, mask=m, other=0.0).to(tl.float32)
    tl.store(h_out + row * E + i, h.to(h_out.dtype.element_ty), mask=m)
    if QUANT:  # from h as stored (rounded), so the result is quantize_x(h_out)'s bit for bit
        v = tl.reshape(h.to(h_out.dtype.element_ty).to(tl.float32), [BLOCK // 32, 32])
        q, d16 = _q8_blocks(v)
        b_i = tl.arange(0, BLOCK // 32)
        bm = b_i < E // 32
        col = b_i[:, None] * 32 + tl.arange(0, 32)[None, :]
        tl.store(q_out + row * E + col, q.to(tl.int8), mask=bm[:, None])
        tl.store(d_out + row * (E // 32) + b_i, d16, mask=bm)
        tl.store(s_out + row * (E // 32) + b_i, d16 * tl.sum(q, axis=1), mask=bm)


def add_rms_norm(x: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 x_out: torch.Tensor, h_out: torch.Tensor,
                 h_q: "QuantizedX | None" = None) -> None:
    """x_out = x (+ a) (+ b), h_out = RMSNorm(x_out) * weight; x, x_out, h_out [T, E] of one
    dtype, a and b [T, E] float32 or that dtype, weight [E]; all contiguous. x_out must not be x.
    h_q: (int8 [T, E], float32 [T, E/32] x 2) written with quant_ops.quantize_x(h_out)'s values
    (E a multiple of 32)."""
    t, e = x.shape
    for name, v in (("a", a), ("b", b), ("x_out", x_out), ("h_out", h_out)):
        if v is not None and (v.shape != x.shape or not v.is_contiguous()):
            raise ValueError(f"add_rms_norm: {name} {tuple(v.shape)} is not a contiguous {tuple(x.shape)}")
    if not x.is_contiguous() or weight.numel() != e or x_out.data_ptr() == x.data_ptr():
        raise ValueError("add_rms_norm: x must be contiguous, weight [E], x_out another buffer than x")
    if h_q is not None:
        q, d, s = h_q
        if (e % 32 or q.shape != (t, e) or q.dtype != torch.int8 or d.shape != (t, e // 32) or s.shape != d.shape
                or d.dtype != torch.float32 or s.dtype != torch.float32
                or not (q.is_contiguous() and d.is_contiguous() and s.is_contiguous())):
            raise ValueError(f"add_rms_norm: h_q must be contiguous int8 [{t}, {e}] and float32 [{t}, {e // 32}] x 2 "
                             f"(E a multiple of 32)")
    if t == 0:
        return
    q, d, s = h_q if h_q is not None else (h_out, h_out, h_out)
    _add_rms_norm_kernel[(t,)](x, x if a is None else a, x if b is None else b, weight, x_out, h_out, q, d, s, e, eps,
                               HAS_A=a is not None, HAS_B=b is not None, BLOCK=triton.next_power_of_2(e),
                               QUANT=h_q is not None, num_warps=4)
