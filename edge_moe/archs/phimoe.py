"""Phi-3.5-MoE as llama.cpp runs it (src/models/phi3.cpp, MoE branch): RMS norms that keep
the LayerNorm's bias, biases on q/k/v/o and the LM head (the executor adds any bias the GGUF
has), NEOX rope, softmax top-2 renormalised.

transformers uses LayerNorm and `sparsemixer` routing instead; we follow llama.cpp so that
one GGUF gives the same logits in both (README, "Correctness", names the deviation)."""

from __future__ import annotations

from edge_moe.archs.common import ArchOps, rms_norm
from edge_moe.archs.mixtral import route
from edge_moe.archs.qwen3moe import rope_only
from edge_moe.model_config import RopeLayout

OPS = ArchOps(norm=rms_norm, rope=RopeLayout.NEOX, prepare_qk=rope_only, route=route,
             has_shared_expert=False, fused_qk="rope")
