"""One Triton launch for a resident layer's routing: softmax, top-k, the weights and the pair table.

In a decode graph whose layer has every expert cached (edge_moe/decode_graphs.py), torch's
routing (softmax, topk's gather and sort, the weights' sum) and the on-device pair table
(index_select, two aranges, a division, a cat) plus the copies into the graph's buffers were
~12 kernels and ~25 us of GPU time per layer (torch.profiler on the H100 box, Qwen3 shape,
`benchmarks/results/2026-11-24_session6/kernel_mix_qwen3.txt`). Here, one program per token:

    probs = softmax(logits[t])                              float32, over n_expert
    ids[t, j], w[t, j] = the k largest probs, largest first (llama.cpp's and torch.topk's order)
    w[t] = w[t] / sum(w[t]) if normalize; w[t] *= scale
    pairs[:3, t*k + j] = bases[layer, ids[t, j]] + part_offsets  (gate, up, down byte offsets)
    pairs[3, t*k + j] = t;  pairs[4, t*k + j] = t*k + j             (gpu_experts.pair_table's layout)

Equal probabilities go to the lower expert id first; torch.topk leaves their order open.

A host layer's front (experts looked up on the host) takes `route_pack` instead: the same routing,
and the row the host reads in one copy, [ids (as floats, exact) | weights | router logits | h],
written by the same launch (torch's routing, casts and cat were ~8 kernels and ~12 us a layer,
session 9's kernel table).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_topk(x, e, em, scale, K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                  NORMALIZE: tl.constexpr):
    """Logits x [BLOCK_E] float32 (-inf past n_expert) -> the k largest probabilities (normalized
    and scaled) and their ids [BLOCK_K], largest first, and the mask of the k lanes."""
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    p = tl.where(em, p, -1.0)  # padding lanes are never picked
    kk = tl.arange(0, BLOCK_K)
    sel_w = tl.zeros((BLOCK_K,), dtype=tl.float32)
    sel_id = tl.zeros((BLOCK_K,), dtype=tl.int64)
    for j in tl.static_range(K):
        best = tl.max(p, axis=0)
        idx = tl.min(tl.where(p == best, e, BLOCK_E), axis=0)  # the lowest id among equals
        sel_w = tl.where(kk == j, best, sel_w)
        sel_id = tl.where(kk == j, idx.to(tl.int64), sel_id)
        p = tl.where(e == idx, -1.0, p)
    km = kk < K
    if NORMALIZE:
        sel_w = sel_w / tl.sum(tl.where(km, sel_w, 0.0), axis=0)
    return sel_w * scale, sel_id, km


@triton.jit
def _route_pairs_kernel(logits, n_expert, bases, part_offsets, w_out, ids_out, pairs, n_pairs, scale,
                        K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, NORMALIZE: tl.constexpr):
    t = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    em = e < n_expert
    x = tl.load(logits + t * n_expert + e, mask=em, other=float("-inf")).to(tl.float32)
    sel_w, sel_id, km = _softmax_topk(x, e, em, scale, K, BLOCK_E, BLOCK_K, NORMALIZE)
    kk = tl.arange(0, BLOCK_K)
    tl.store(w_out + t * K + kk, sel_w, mask=km)
    tl.store(ids_out + t * K + kk, sel_id, mask=km)
    base = tl.load(bases + sel_id, mask=km, other=0)
    col = t * K + kk
    for part in tl.static_range(3):
        tl.store(pairs + part * n_pairs + col, base + tl.load(part_offsets + part), mask=km)
    tl.store(pairs + 3 * n_pairs + col, col * 0 + t, mask=km)
    tl.store(pairs + 4 * n_pairs + col, col, mask=km)


def route_pairs(logits: torch.Tensor, k: int, normalize: bool, scale: float, layer_bases: torch.Tensor,
                part_offsets: torch.Tensor, w_out: torch.Tensor, ids_out: torch.Tensor, pairs: torch.Tensor) -> None:
    """Routing of logits [T, n_expert] into w_out [T, k] float32, ids_out [T, k] int64 and the pair
    table pairs [5, T * k] int64 of one resident layer (layer_bases [n_expert] int64: each expert's
    slot byte offset; part_offsets [3] int64). Every output is written in place (graph buffers)."""
    n_tok, n_expert = logits.shape
    if w_out.shape != (n_tok, k) or ids_out.shape != (n_tok, k) or pairs.shape != (5, n_tok * k):
        raise ValueError(f"outputs must be [{n_tok}, {k}], [{n_tok}, {k}] and [5, {n_tok * k}]")
    if w_out.dtype != torch.float32 or ids_out.dtype != torch.int64 or pairs.dtype != torch.int64:
        raise ValueError("w_out must be float32, ids_out and pairs int64")
    if not (logits.is_contiguous() and layer_bases.is_contiguous() and pairs.is_contiguous()):
        raise ValueError("logits, layer_bases and pairs must be contiguous")
    _route_pairs_kernel[(n_tok,)](logits, n_expert, layer_bases, part_offsets, w_out, ids_out, pairs, n_tok * k,
                                  float(scale), K=k, BLOCK_E=triton.next_power_of_2(n_expert),
                                  BLOCK_K=triton.next_power_of_2(k), NORMALIZE=normalize)


@triton.jit
def _route_pack_kernel(logits, n_expert, h, w_out, row, scale, N_EMBD: tl.constexpr, K: tl.constexpr,
                       BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, NORMALIZE: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    em = e < n_expert
    x = tl.load(logits + e, mask=em, other=float("-inf")).to(tl.float32)
    sel_w, sel_id, km = _softmax_topk(x, e, em, scale, K, BLOCK_E, BLOCK_K, NORMALIZE)
    kk = tl.arange(0, BLOCK_K)
    tl.store(w_out + kk, sel_w, mask=km)
    tl.store(row + kk, sel_id.to(tl.float32), mask=km)  # ids < 2**24: exact as floats
    tl.store(row + K + kk, sel_w, mask=km)
    tl.store(row + 2 * K + e, x, mask=em)
    for c in tl.static_range(0, N_EMBD, BLOCK_H):  # (a model's width: one compile per model)
        j = c + tl.arange(0, BLOCK_H)
        tl.store(row + 2 * K + n_expert + j, tl.load(h + j, mask=j < N_EMBD).to(tl.float32), mask=j < N_EMBD)


def route_pack(logits: torch.Tensor, h: torch.Tensor, k: int, normalize: bool, scale: float, w_out: torch.Tensor,
               row: torch.Tensor) -> None:
    """One token's routing (logits [1, n_expert]) into w_out [1, k] float32 and the host row
    row [1, 2k + n_expert + n_embd] float32 = [ids | weights | logits | h] (h [1, n_embd])."""
    n_tok, n_expert = logits.shape
    n_embd = h.shape[-1]
    if n_tok != 1 or h.shape != (1, n_embd):
        raise ValueError(f"route_pack takes one token, got logits {tuple(logits.shape)} and h {tuple(h.shape)}")
    if w_out.shape != (1, k) or row.shape != (1, 2 * k + n_expert + n_embd):
        raise ValueError(f"outputs must be [1, {k}] and [1, {2 * k + n_expert + n_embd}]")
    if w_out.dtype != torch.float32 or row.dtype != torch.float32:
        raise ValueError("w_out and row must be float32")
    if not (logits.is_contiguous() and h.is_contiguous() and row.is_contiguous()):
        raise ValueError("logits, h and row must be contiguous")
    _route_pack_kernel[(1,)](logits, n_expert, h, w_out, row, float(scale), N_EMBD=n_embd, K=k,
                             BLOCK_E=triton.next_power_of_2(n_expert), BLOCK_K=triton.next_power_of_2(k),
                             BLOCK_H=min(1024, triton.next_power_of_2(n_embd)), NORMALIZE=normalize)
