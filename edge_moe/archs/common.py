"""Pieces the architectures share: norms, rotary embeddings, routers. Shapes in comments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from edge_moe.model_config import MoEConfig, RopeLayout


def rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    # x [..., E]; llama.cpp's LLM_NORM_RMS, bias added after the gain when the model has one
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    return y + bias if bias is not None else y


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rope_tables(cfg: MoEConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, rope_dim / 2] for absolute positions [T]."""
    half = cfg.rope_dim // 2
    inv_freq = cfg.rope_freq_base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, half]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: RopeLayout) -> torch.Tensor:
    """x [T, H, D]; rotates the first rope_dim = 2 * cos.shape[-1] dims of each head."""
    rd = 2 * cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # [T, 1, rd/2]
    if layout is RopeLayout.NORM:  # adjacent pairs (x0, x1), (x2, x3), ...
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
    else:  # NEOX: first half paired with second half
        a, b = rot[..., : rd // 2], rot[..., rd // 2:]
        out = torch.cat((a * c - b * s, a * s + b * c), dim=-1)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def softmax_topk(logits: torch.Tensor, k: int, normalize: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, n_expert] -> (weights [T, k] float32, ids [T, k] int64), llama.cpp's order."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * scale if scale != 1.0 else weights, ids


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            layout: RopeLayout) -> tuple[torch.Tensor, torch.Tensor]:
    return apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout)


NormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]
# (q [T, H, D], k [T, KV, D], layer weights, cfg, cos, sin) -> rotated (and normed) q, k
PrepareQK = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# (router logits [T, n_expert], cfg) -> (weights [T, k], ids [T, k])
RouteFn = Callable[[torch.Tensor, MoEConfig], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ArchOps:
    """What differs between architectures, as plain functions (one file per family)."""

    norm: NormFn
    prepare_qk: PrepareQK
    route: RouteFn
    has_shared_expert: bool
