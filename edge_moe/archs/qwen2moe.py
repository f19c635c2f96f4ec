"""Qwen1.5/2-MoE (src/models/qwen2moe.cpp): q/k/v biases, NEOX rope, softmax top-k not
renormalised (MoEConfig.normalize_topk is False for this family), and a shared expert of its
own size behind a sigmoid gate: y += sigmoid(h . w_gate_inp_shexp) * FFN_shexp(h)
(the executor computes it on the accelerator beside the routed experts)."""

from __future__ import annotations

from edge_moe.archs.common import ArchOps, rms_norm
from edge_moe.archs.mixtral import route
from edge_moe.archs.qwen3moe import rope_only
from edge_moe.model_config import RopeLayout

OPS = ArchOps(norm=rms_norm, rope=RopeLayout.NEOX, prepare_qk=rope_only, route=route,
             has_shared_expert=True, fused_qk="rope")
