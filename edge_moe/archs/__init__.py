"""One small file per model family: what differs in attention, norms, rope and routing."""

from __future__ import annotations

from edge_moe.archs.common import ArchOps
from edge_moe.archs import mixtral, olmoe, phimoe, qwen2moe, qwen3moe

ARCH_OPS: dict[str, ArchOps] = {
    "llama": mixtral.OPS,
    "phimoe": phimoe.OPS,
    "qwen2moe": qwen2moe.OPS,
    "qwen3moe": qwen3moe.OPS,
    "olmoe": olmoe.OPS,
}
