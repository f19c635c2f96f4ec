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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_pairs_kernel(logits, n_expert, bases, part_offsets, w_out, ids_out, pairs, n_pairs, scale,
                        K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, NORMALIZE: tl.constexpr):
    t = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    em = e < n_expert
    x = tl.load(logits + t * n_expert + e, mask=em, other=float("-inf")).to(tl.float32)
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
    sel_w = sel_w * scale
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
