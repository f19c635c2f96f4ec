"""Qwen3-MoE (src/models/qwen3moe.cpp): RMSNorm of q and k per head before rope, NEOX rope,
head_dim from attention.key_length, softmax top-k renormalised, no shared expert."""

from __future__ import annotations

import torch

from edge_moe.archs.common import ArchOps, RopeTables, rms_norm, rope_qk
from edge_moe.archs.mixtral import route
from edge_moe.model_config import MoEConfig, RopeLayout


def rope_only(q: torch.Tensor, k: torch.Tensor, lw: object, cfg: MoEConfig, rope: RopeTables,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_qk(q, k, rope)


def prepare_qk(q: torch.Tensor, k: torch.Tensor, lw: object, cfg: MoEConfig, rope: RopeTables,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    q = rms_norm(q, lw.q_norm, None, cfg.norm_eps)  # type: ignore[attr-defined]  # over head_dim
    k = rms_norm(k, lw.k_norm, None, cfg.norm_eps)  # type: ignore[attr-defined]
    return rope_qk(q, k, rope)


OPS = ArchOps(norm=rms_norm, rope=RopeLayout.NEOX, prepare_qk=prepare_qk, route=route,
             has_shared_expert=False, fused_qk="head_norm")
