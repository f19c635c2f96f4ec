"""OLMoE (src/models/olmoe.cpp): RMSNorm of the whole q and k projections (not per head)
before rope, NEOX rope, softmax top-k not renormalised."""

from __future__ import annotations

import torch

from edge_moe.archs.common import ArchOps, RopeTables, rms_norm, rope_qk
from edge_moe.archs.mixtral import route
from edge_moe.model_config import MoEConfig, RopeLayout


def prepare_qk(q: torch.Tensor, k: torch.Tensor, lw: object, cfg: MoEConfig, rope: RopeTables,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    # q [T, H, D] -> normed over H * D, the width llama.cpp's attn_q_norm has
    q = rms_norm(q.flatten(-2), lw.q_norm, None, cfg.norm_eps).view_as(q)  # type: ignore[attr-defined]
    k = rms_norm(k.flatten(-2), lw.k_norm, None, cfg.norm_eps).view_as(k)  # type: ignore[attr-defined]
    return rope_qk(q, k, rope)


OPS = ArchOps(norm=rms_norm, rope=RopeLayout.NEOX, prepare_qk=prepare_qk, route=route, has_shared_expert=False)
