"""Mixtral (GGUF arch "llama" with experts), as llama.cpp's src/models/llama.cpp runs it:
RMSNorm, rope on adjacent pairs (the converter permuted Q/K rows for this layout),
softmax over all experts, top-2, renormalised."""

from __future__ import annotations

import torch

from edge_moe.archs.common import ArchOps, RopeTables, rms_norm, rope_qk, softmax_topk
from edge_moe.model_config import MoEConfig, RopeLayout


def prepare_qk(q: torch.Tensor, k: torch.Tensor, lw: object, cfg: MoEConfig, rope: RopeTables,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_qk(q, k, rope)


def route(logits: torch.Tensor, cfg: MoEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return softmax_topk(logits, cfg.n_expert_used, normalize=cfg.normalize_topk, scale=cfg.expert_weights_scale)


OPS = ArchOps(norm=rms_norm, rope=RopeLayout.NORM, prepare_qk=prepare_qk, route=route,
             has_shared_expert=False, fused_qk="rope")
