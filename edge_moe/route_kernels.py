"""One Triton launch for a resident layer's router and routing: logits, softmax, top-k, the weights and
the pair table.

In a decode graph whose layer has every expert cached (edge_moe/decode_graphs.py), torch's
routing (softmax, topk's gather and sort, the weights' sum) and the on-device pair table
(index_select, two aranges, a division, a cat) plus the copies into the graph's buffers were
~12 kernels and ~25 us of GPU time per layer (torch.profiler on the H100 box, Qwen3 shape,
`benchmarks/results/2026-11-24_session6/kernel_mix_qwen3.txt`). Here, for the one token:

    logits = router h                                       programs of a few experts each
    (the last program to finish, then:)
    probs = softmax(logits)                                 float32, over n_expert
    ids[j], w[j] = the k largest probs, largest first  (llama.cpp's and torch.topk's order)
    w = w / sum(w) if normalize; w *= scale
    pairs[:3, j] = bases[layer, ids[j]] + part_offsets     (gate, up, down byte offsets)
    pairs[3, j] = 0;  pairs[4, j] = j                       (gpu_experts.pair_table's layout)

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
def _router_route_kernel(h, router, r_stride, logits, counter, n_expert, bases, part_offsets, w_out, ids_out, pairs,
                         scale, clear, E: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, K: tl.constexpr,
                         BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, NORMALIZE: tl.constexpr,
                         CLEAR_N: tl.constexpr, CLEAR_PER: tl.constexpr, CLEAR_P2: tl.constexpr):
    pid = tl.program_id(0)
    if CLEAR_N > 0:  # this program's share of the experts' accumulator
        j = pid * CLEAR_PER + tl.arange(0, CLEAR_P2)
        tl.store(clear + j, tl.zeros((CLEAR_P2,), tl.float32), mask=(j < CLEAR_N) & (j < pid * CLEAR_PER + CLEAR_PER))
    r = pid * ROWS + tl.arange(0, ROWS)  # this program's router rows (experts)
    rm = r < n_expert
    rows = r.to(tl.int64) * r_stride
    acc = tl.zeros((ROWS, BLOCK_H), tl.float32)
    for c in tl.static_range(0, E, BLOCK_H):
        j = c + tl.arange(0, BLOCK_H)
        jm = j < E
        x = tl.load(h + j, mask=jm, other=0.0).to(tl.float32)
        acc += tl.load(router + rows[:, None] + j[None, :], mask=rm[:, None] & jm[None, :], other=0.0).to(tl.float32) * x[None, :]
    # rounded to h's dtype, as F.linear's output is (the routing then matches m.route's)
    tl.store(logits + r, tl.sum(acc, axis=1).to(h.dtype.element_ty).to(tl.float32), mask=rm)
    # the last program to finish routes: the acq_rel ticket orders every program's logits before it
    ticket = tl.atomic_add(counter, 1, sem="acq_rel")
    if ticket == tl.num_programs(0) - 1:  # (names new to this block: Triton keeps one type per name)
        ex = tl.arange(0, BLOCK_E)
        exm = ex < n_expert
        lg = tl.load(logits + ex, mask=exm, other=float("-inf"), cache_modifier=".cg")  # from L2, not this SM's L1
        sel_w, sel_id, km = _softmax_topk(lg, ex, exm, scale, K, BLOCK_E, BLOCK_K, NORMALIZE)
        kk = tl.arange(0, BLOCK_K)
        tl.store(w_out + kk, sel_w, mask=km)
        tl.store(ids_out + kk, sel_id, mask=km)
        base = tl.load(bases + sel_id, mask=km, other=0)
        for part in tl.static_range(3):
            tl.store(pairs + part * K + kk, base + tl.load(part_offsets + part), mask=km)
        tl.store(pairs + 3 * K + kk, kk * 0, mask=km)
        tl.store(pairs + 4 * K + kk, kk, mask=km)
        tl.atomic_xchg(counter, 0)  # ready for the next launch (launches on a stream never overlap)


_scratch: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}
# route_pairs' programs: one router row (expert) each; one warp where there are many experts (the
# last program's top-k rounds are then shuffles, not shared-memory reductions), four where there
# are few long rows. Session 14's sweep (H100, graph-timed, scratch/router_sweep.py): 128 x 2048
# 4.50 us (cuBLAS's GEMV alone 4.64, plus the routing launch's ~3.9 before), 4 rows or 4 warps
# 5.3-6.5; Mixtral's 8 x 4096 3.50 us at 4 warps, 4.17 at 1 (GEMV alone 5.19).
ROUTER_ROWS = 1
MANY_EXPERTS = 32


def _router_scratch(device: torch.device, n_expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n_expert] float32, ticket counter [1] int32 at 0), made once per device and width
    and reused by every launch: the decode graphs capture their addresses."""
    key = (device, n_expert)
    if key not in _scratch:
        _scratch[key] = (torch.empty(n_expert, dtype=torch.float32, device=device),
                         torch.zeros(1, dtype=torch.int32, device=device))
    return _scratch[key]


def route_pairs(h: torch.Tensor, router: torch.Tensor, k: int, normalize: bool, scale: float,
                layer_bases: torch.Tensor, part_offsets: torch.Tensor, w_out: torch.Tensor, ids_out: torch.Tensor,
                pairs: torch.Tensor, clear: torch.Tensor | None = None) -> None:
    """One token's router and routing in one launch: logits = router h (h [1, E], router
    [n_expert, E], rows contiguous), then w_out [1, k] float32, ids_out [1, k] int64 and the pair
    table pairs [5, k] int64 of one resident layer (layer_bases [n_expert] int64: each expert's
    slot byte offset; part_offsets [3] int64). Every output is written in place (graph buffers).
    clear: a float32 [1, E'] the same launch zeroes (the accumulator the layer's experts add into).

    Programs of ROWS experts each compute their logits; the last one to finish (a ticket
    counter) does the softmax, top-k and pair table. It replaces cuBLAS's GEMV and a routing
    launch (5.0 and 3.9 us a layer at the Qwen3 shape, H100, session 14's profile)."""
    n_tok, e = h.shape
    n_expert = router.shape[0]
    if n_tok != 1 or router.shape != (n_expert, e) or router.stride(1) != 1 or not h.is_contiguous():
        raise ValueError(f"route_pairs takes one token: h [1, E] contiguous and router [n_expert, E] with contiguous "
                         f"rows, got h {tuple(h.shape)} and router {tuple(router.shape)}")
    if w_out.shape != (1, k) or ids_out.shape != (1, k) or pairs.shape != (5, k):
        raise ValueError(f"outputs must be [1, {k}], [1, {k}] and [5, {k}]")
    if w_out.dtype != torch.float32 or ids_out.dtype != torch.int64 or pairs.dtype != torch.int64:
        raise ValueError("w_out must be float32, ids_out and pairs int64")
    if not (layer_bases.is_contiguous() and pairs.is_contiguous() and w_out.is_contiguous() and ids_out.is_contiguous()):
        raise ValueError("layer_bases, pairs, w_out and ids_out must be contiguous")
    if clear is not None and (clear.dtype != torch.float32 or clear.dim() != 2 or clear.shape[0] != 1
                              or not clear.is_contiguous()):
        raise ValueError(f"clear must be a contiguous float32 [1, E], got {clear.dtype} {tuple(clear.shape)}")
    logits, counter = _router_scratch(h.device, n_expert)
    rows = ROUTER_ROWS
    n_prog = triton.cdiv(n_expert, rows)
    clear_n = 0 if clear is None else clear.shape[1]
    clear_per = triton.cdiv(max(clear_n, 1), n_prog)
    _router_route_kernel[(n_prog,)](
        h, router, router.stride(0), logits, counter, n_expert, layer_bases, part_offsets, w_out, ids_out, pairs,
        float(scale), w_out if clear is None else clear, E=e, ROWS=rows, BLOCK_H=min(1024, triton.next_power_of_2(e)),
        K=k, BLOCK_E=triton.next_power_of_2(n_expert), BLOCK_K=triton.next_power_of_2(k), NORMALIZE=normalize,
        CLEAR_N=clear_n, CLEAR_PER=clear_per, CLEAR_P2=triton.next_power_of_2(clear_per), num_warps=1 if n_expert >= MANY_EXPERTS else 4)


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
