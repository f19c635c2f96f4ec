"""Pieces the architectures share: norms, rotary embeddings, routers. Shapes in comments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from edge_moe.model_config import MoEConfig, RopeLayout


def rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    # x [..., E]; llama.cpp's LLM_NORM_RMS, bias added after the gain when the model has one.
    # One fused kernel on CUDA (it accumulates in float32 for half inputs).
    y = torch.nn.functional.rms_norm(x, x.shape[-1:], weight, eps)
    return y + bias if bias is not None else y


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


@dataclass(frozen=True)
class RopeTables:
    """Rotary embedding of T positions over whole heads: x * cos + x[..., perm] * sin.

    Dimension i of a head pairs with perm[i]; cos and sin [T, 1, D] repeat each pair's angle
    on both of its dimensions, sin carrying the sign of the rotation; dimensions past
    rope_dim have cos 1 and sin 0 (left as they are). Three kernels per tensor instead of a
    dozen of slices, stacks and cats."""

    cos: torch.Tensor  # [T, 1, D]
    sin: torch.Tensor  # [T, 1, D]
    perm: torch.Tensor  # [D] int64


def rope_tables(cfg: MoEConfig, layout: RopeLayout, positions: torch.Tensor, dtype: torch.dtype) -> RopeTables:
    """Tables for absolute positions [T] (on their device), in `dtype`."""
    half, d = cfg.rope_dim // 2, cfg.head_dim
    dev = positions.device
    inv_freq = cfg.rope_freq_base ** (-torch.arange(half, dtype=torch.float64, device=dev) / half)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, half]
    c, s = angles.cos(), angles.sin()
    t = positions.shape[0]
    cos = torch.ones((t, d), dtype=torch.float64, device=dev)
    sin = torch.zeros((t, d), dtype=torch.float64, device=dev)
    perm = torch.arange(d, device=dev)
    pair = torch.arange(half, device=dev)
    if layout is RopeLayout.NORM:  # adjacent pairs (x0, x1), (x2, x3), ...
        first, second = 2 * pair, 2 * pair + 1
    else:  # NEOX: dimension i pairs with i + rope_dim / 2
        first, second = pair, pair + half
    cos[:, first], cos[:, second] = c, c
    sin[:, first], sin[:, second] = -s, s  # (a, b) -> (a c - b s, b c + a s)
    perm[first], perm[second] = second, first
    return RopeTables(cos[:, None, :].to(dtype), sin[:, None, :].to(dtype), perm)


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """x [T, H, D] rotated by position."""
    return torch.addcmul(x * rope.cos, x.index_select(-1, rope.perm), rope.sin)


def softmax_topk(logits: torch.Tensor, k: int, normalize: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, n_expert] -> (weights [T, k] float32, ids [T, k] int64), llama.cpp's order."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * scale if scale != 1.0 else weights, ids


def rope_qk(q: torch.Tensor, k: torch.Tensor, rope: RopeTables) -> tuple[torch.Tensor, torch.Tensor]:
    return apply_rope(q, rope), apply_rope(k, rope)


NormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]
# (q [T, H, D], k [T, KV, D], layer weights, cfg, rope tables) -> rotated (and normed) q, k
PrepareQK = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# (router logits [T, n_expert], cfg) -> (weights [T, k], ids [T, k])
RouteFn = Callable[[torch.Tensor, MoEConfig], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ArchOps:
    """What differs between architectures, as plain functions (one file per family)."""

    norm: NormFn
    rope: RopeLayout
    prepare_qk: PrepareQK
    route: RouteFn
    has_shared_expert: bool
    # what prepare_qk does, for the one-launch CUDA path (edge_moe/attn_kernels.py): "rope",
    # "head_norm" (RMSNorm per head, then rope), or "" (something else: the torch path only)
    fused_qk: str = ""
