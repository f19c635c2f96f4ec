"""Attention of one query token (decode) in two Triton launches, flash-decoding style.

What it replaces: `HybridModel._attention` ran torch's SDPA on a [1, KV, group, D] view with
a bool mask, then permuted the output back to [1, H * D]. On the H100 (Qwen3-30B shape) that
is ~8.8 us of cuDNN flash attention plus ~2.7 us for the permute's strided copy per layer per
token, and it reads the whole KV bucket of the decode graph (256, 512, 1024, ...; a masked key
is still read). Here:

    split kernel, grid (KV, n_splits): one program takes every query head of one KV head
        (GQA: query head h reads KV head h // group) against one chunk of CHUNK keys, so each
        K/V row is read once for the whole group. Scores are tl.dot([group, D], [D, BLOCK_S]),
        the group padded to >= 16 rows (tl.dot's minimum; padded rows are zeros, never stored).
        A chunk wholly past positions[0] returns at once; inside the last one the keys past it
        are masked. Each program leaves its running max m, sum l and unnormalised acc [group, D]
        (float32, base-2 exponents) in a small scratch.
    combine kernel, grid (H,): rescales the live splits of one head to their common max, sums,
        divides, and stores out [1, H * D] in the model dtype (no permute).

positions[0] is read on the device by both kernels, never on the host: the decode graphs
capture this once per KV bucket and replay it at every position. n_splits depends only on the
bucket length S (a Python int), so each graph's grid is fixed. The splits rule (`split_plan`)
aims at ~one wave of programs (DECODE_ATTN_PROGRAMS, ~the H100's 132 SMs) for the whole
bucket, with chunks of at least BLOCK_S keys and at most MAX_SPLITS splits; a position early in
its bucket leaves some programs with nothing to do, which they learn from one load.
Scores, softmax and accumulators are float32; inputs float16, bfloat16 or float32 (float32
dots in IEEE precision, not TF32). The scratch is allocated once per (device, H, D) for
MAX_SPLITS splits, so the hot path allocates only the output (when `out` is not given).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

BLOCK_S = int(os.environ.get("EDGE_MOE_DECODE_ATTN_BLOCK", "64"))  # keys per tl.dot step
DECODE_ATTN_PROGRAMS = int(os.environ.get("EDGE_MOE_DECODE_ATTN_PROGRAMS", "128"))  # split programs aimed at
MAX_SPLITS = 64  # the scratch's size, and the combine's widest load [MAX_SPLITS, D]
LOG2_E = 1.4426950408889634

_scratch: dict[tuple[torch.device, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


@triton.jit
def _split_kernel(q, keys, values, positions, part_acc, part_ml, S, H, scale, q_sh, k_ss, k_sh, v_ss, v_sh,
                  MAXS: tl.constexpr, GROUP: tl.constexpr, GROUP_P: tl.constexpr, D: tl.constexpr,
                  D_P: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, DOT_F32: tl.constexpr):
    kvh = tl.program_id(0)
    sp = tl.program_id(1)
    n_keys = tl.minimum(tl.load(positions).to(tl.int32) + 1, S)  # the query sees keys 0..positions[0]
    start = sp * CHUNK
    if start >= n_keys:  # nothing of this chunk is visible: the combine skips this split too
        return
    end = tl.minimum(start + CHUNK, n_keys)
    g = tl.arange(0, GROUP_P)
    d = tl.arange(0, D_P)
    gm, dm = g < GROUP, d < D
    heads = kvh * GROUP + g  # [GROUP_P] query heads of this KV head
    qt = tl.load(q + heads[:, None] * q_sh + d[None, :], mask=gm[:, None] & dm[None, :], other=0.0)  # [G, D]
    if DOT_F32:
        qt = qt.to(tl.float32)
    m_i = tl.full([GROUP_P], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_P], tl.float32)
    acc = tl.zeros([GROUP_P, D_P], tl.float32)
    # constexpr bounds (the interpreter cannot loop to a loaded bound): steps past `end` are
    # wholly masked, load nothing and change nothing (p = 0, alpha = 1)
    for s0 in range(0, CHUNK, BLOCK):
        s = start + s0 + tl.arange(0, BLOCK)
        sm = s < end
        rows = s.to(tl.int64)
        kt = tl.load(keys + rows[:, None] * k_ss + kvh * k_sh + d[None, :], mask=sm[:, None] & dm[None, :],
                     other=0.0)  # [BLOCK, D]
        if DOT_F32:
            kt = kt.to(tl.float32)
        sc = tl.dot(qt, tl.trans(kt), input_precision="ieee") * scale  # [G, BLOCK], log2 units
        sc = tl.where(sm[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))  # finite: the first step holds key `start`
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(sc - m_new[:, None])  # [G, BLOCK]
        vt = tl.load(values + rows[:, None] * v_ss + kvh * v_sh + d[None, :], mask=sm[:, None] & dm[None, :],
                     other=0.0)  # [BLOCK, D]
        if DOT_F32:
            vt = vt.to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        m_i = m_new
    row = sp * H + heads  # scratch row of (split, head)
    tl.store(part_acc + row[:, None] * D + d[None, :], acc, mask=gm[:, None] & dm[None, :])
    tl.store(part_ml + row, m_i, mask=gm)
    tl.store(part_ml + MAXS * H + row, l_i, mask=gm)


@triton.jit
def _combine_kernel(part_acc, part_ml, positions, out, S, H, MAXS: tl.constexpr, D: tl.constexpr,
                    D_P: tl.constexpr, CHUNK: tl.constexpr, SPLITS_P: tl.constexpr):
    h = tl.program_id(0)
    n_keys = tl.minimum(tl.load(positions).to(tl.int32) + 1, S)
    sp = tl.arange(0, SPLITS_P)
    live = sp < tl.cdiv(n_keys, CHUNK)  # the splits that saw a key (the others wrote nothing)
    m = tl.load(part_ml + sp * H + h, mask=live, other=float("-inf"))  # [SPLITS_P]
    l_s = tl.load(part_ml + MAXS * H + sp * H + h, mask=live, other=0.0)
    w = tl.where(live, tl.exp2(m - tl.max(m, axis=0)), 0.0)  # each split's share at the common max
    d = tl.arange(0, D_P)
    dm = d < D
    acc = tl.load(part_acc + (sp[:, None] * H + h) * D + d[None, :], mask=live[:, None] & dm[None, :],
                  other=0.0)  # [SPLITS_P, D]
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_s * w, axis=0)  # [D]
    tl.store(out + h * D + d, o.to(out.dtype.element_ty), mask=dm)


def split_plan(length: int, n_head_kv: int) -> tuple[int, int]:
    """(keys per split, splits) for a KV length: ~DECODE_ATTN_PROGRAMS programs over the KV
    heads, chunks of at least BLOCK_S keys (powers of two), at most MAX_SPLITS splits.
    E.g. KV = 4: 256 -> (64, 4), 2048 -> (64, 32), 4096 -> (128, 32); KV = 8: 4096 -> (256, 16)."""
    chunk = max(BLOCK_S, triton.next_power_of_2(triton.cdiv(length * n_head_kv, DECODE_ATTN_PROGRAMS)),
                triton.next_power_of_2(triton.cdiv(length, MAX_SPLITS)))
    return chunk, triton.cdiv(length, chunk)


def _scratch_for(device: torch.device, n_head: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(acc [MAX_SPLITS, H, D], m and l [2, MAX_SPLITS, H]) float32: made on the first call (the
    decode graphs run each segment eagerly before capturing it), reused by every later one."""
    key = (device, n_head, head_dim)
    if key not in _scratch:
        _scratch[key] = (torch.empty((MAX_SPLITS, n_head, head_dim), dtype=torch.float32, device=device),
                         torch.empty((2, MAX_SPLITS, n_head), dtype=torch.float32, device=device))
    return _scratch[key]


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                     out: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v of one query: q [1, H, D], keys/values [S, KV, D] (the KV
    cache's first S rows, any row and head strides), positions [1] (device, int): the query sees
    keys 0..positions[0] (and no more than S). -> out [1, H * D] in q's dtype.
    chunk: keys per split, instead of `split_plan`'s (tests)."""
    _, n_head, d = q.shape
    length, kv, _ = keys.shape
    if q.shape[0] != 1 or keys.shape[2] != d or values.shape != keys.shape or n_head % kv:
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, keys {tuple(keys.shape)}, values "
                         f"{tuple(values.shape)} are not [1, H, D], [S, KV, D] x 2 with KV dividing H")
    if q.stride(2) != 1 or keys.stride(2) != 1 or values.stride(2) != 1 or not (q.dtype == keys.dtype == values.dtype):
        raise ValueError("decode_attention: q, keys and values need one dtype and contiguous heads")
    if chunk is None:
        chunk, n_splits = split_plan(length, kv)
    else:
        n_splits = triton.cdiv(length, chunk)
    if n_splits > MAX_SPLITS:
        raise ValueError(f"decode_attention: {n_splits} splits of {chunk} keys, at most {MAX_SPLITS}")
    if out is None:
        out = torch.empty((1, n_head * d), dtype=q.dtype, device=q.device)
    elif out.shape != (1, n_head * d) or not out.is_contiguous():
        raise ValueError(f"decode_attention: out {tuple(out.shape)} is not a contiguous [1, {n_head * d}]")
    part_acc, part_ml = _scratch_for(q.device, n_head, d)
    group, d_p = n_head // kv, triton.next_power_of_2(d)
    # Triton's interpreter gets bfloat16 tl.dot wrong (3.6): there the dots take float32 operands
    dot_f32 = q.dtype == torch.bfloat16 and q.device.type != "cuda"
    block = max(16, min(BLOCK_S, triton.next_power_of_2(chunk)))  # tl.dot needs >= 16 on each side
    _split_kernel[(kv, n_splits)](
        q, keys, values, positions, part_acc, part_ml, length, n_head, LOG2_E / math.sqrt(d), q.stride(1),
        keys.stride(0), keys.stride(1), values.stride(0), values.stride(1), MAXS=MAX_SPLITS, GROUP=group,
        GROUP_P=max(16, triton.next_power_of_2(group)), D=d, D_P=max(16, d_p), CHUNK=chunk, BLOCK=block,
        DOT_F32=dot_f32, num_warps=4)
    _combine_kernel[(n_head,)](part_acc, part_ml, positions, out, length, n_head, MAXS=MAX_SPLITS, D=d, D_P=d_p,
                               CHUNK=chunk, SPLITS_P=triton.next_power_of_2(n_splits), num_warps=4)
    return out
