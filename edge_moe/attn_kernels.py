"""One Triton launch for what a layer does between its QKV projection and attention.

From the fused projection qkv [T, (H + 2 KV) * D], one program per (token, head):
    q heads:  (RMSNorm over the head, Qwen3) -> rope -> q_out [T, H, D]
    k heads:  (RMSNorm over the head, Qwen3) -> rope -> the layer's K cache at positions[t]
    v heads:  copied to the layer's V cache at positions[t]
The torch path (archs/*.prepare_qk, then KVCache.store) takes ~10 small kernels for this
(two norms, three per rope, two index copies, the splits); decode runs it once per layer per
token, where each kernel costs ~2.5 us of GPU time whatever its size. Rope reads the same
tables (`RopeTables`: x * cos + x[perm] * sin), so both layouts (NORM, NEOX) come for free.
Everything is computed in float32 and rounded once on store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edge_moe.archs.common import RopeTables


@triton.jit
def _qk_prepare_kernel(qkv, qkv_stride, positions, cos, sin, perm, q_norm, k_norm, eps,
                       q_out, k_cache, v_cache, H, KV, D: tl.constexpr, BLOCK_D: tl.constexpr,
                       HEAD_NORM: tl.constexpr):
    t = tl.program_id(0)
    h = tl.program_id(1)  # q heads, then k heads, then v heads
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    row = qkv + t.to(tl.int64) * qkv_stride + h * D
    x = tl.load(row + d, mask=dm, other=0.0).to(tl.float32)
    pos = tl.load(positions + t).to(tl.int64)
    if h < H + KV:
        pd = tl.load(perm + d, mask=dm, other=0)
        xp = tl.load(row + pd, mask=dm, other=0.0).to(tl.float32)  # the rotation partner of each dim
        if HEAD_NORM:
            w_ptr = q_norm if h < H else k_norm
            r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
            x = x * r * tl.load(w_ptr + d, mask=dm, other=0.0).to(tl.float32)
            xp = xp * r * tl.load(w_ptr + pd, mask=dm, other=0.0).to(tl.float32)
        c = tl.load(cos + t * D + d, mask=dm, other=0.0).to(tl.float32)
        s = tl.load(sin + t * D + d, mask=dm, other=0.0).to(tl.float32)
        y = x * c + xp * s
        if h < H:
            tl.store(q_out + (t * H + h) * D + d, y.to(q_out.dtype.element_ty), mask=dm)
        else:
            tl.store(k_cache + (pos * KV + (h - H)) * D + d, y.to(k_cache.dtype.element_ty), mask=dm)
    else:
        tl.store(v_cache + (pos * KV + (h - H - KV)) * D + d, x.to(v_cache.dtype.element_ty), mask=dm)


def qk_prepare(qkv: torch.Tensor, n_head: int, n_head_kv: int, head_dim: int, positions: torch.Tensor,
               rope: RopeTables, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float,
               k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """qkv [T, (H + 2 KV) * D] -> q [T, H, D] (normed per head when q_norm/k_norm [D] are given,
    then rotated); k (the same) and v written to k_cache/v_cache [S, KV, D] at positions [T]."""
    t = qkv.shape[0]
    if qkv.shape[1] != (n_head + 2 * n_head_kv) * head_dim or qkv.stride(1) != 1:
        raise ValueError(f"qk_prepare: qkv {tuple(qkv.shape)} is not [T, (H + 2 KV) * D] with contiguous rows")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("qk_prepare writes into contiguous K/V caches")
    head_norm = q_norm is not None
    if head_norm and (q_norm.numel() != head_dim or k_norm is None or k_norm.numel() != head_dim):
        raise ValueError("qk_prepare normalises per head: q_norm and k_norm must both have head_dim weights")
    q = torch.empty((t, n_head, head_dim), dtype=qkv.dtype, device=qkv.device)
    if t == 0:
        return q
    cos, sin = rope.cos.reshape(-1, head_dim), rope.sin.reshape(-1, head_dim)  # [T, D]
    norm_q = q_norm if head_norm else qkv  # unused pointers when there is no norm
    norm_k = k_norm if head_norm else qkv
    _qk_prepare_kernel[(t, n_head + 2 * n_head_kv)](
        qkv, qkv.stride(0), positions, cos, sin, rope.perm, norm_q, norm_k, eps, q, k_cache, v_cache,
        n_head, n_head_kv, D=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), HEAD_NORM=head_norm,
        num_warps=1)
    return q
