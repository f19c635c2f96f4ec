"""One expert's bytes as the GGUF stores them, and what a device slot holding them takes.

A slot holds one expert's gate [F, E], up [F, E] and down [E, F] exactly as the GGUF stores
them (block-quantized bytes): a fill is a copy, and the budget counts quantized bytes. Each
part starts at a multiple of SLOT_ALIGNMENT, and a part's size is the largest over layers
(types may vary by layer). No torch here: the planner sizes the cache from these without
loading a weight; edge_moe/gpu_experts.py fills its slots with `expert_bytes_view`.
"""

from __future__ import annotations

import numpy as np

from edge_moe.gguf_file import GGUFFile, GGUFTensor
from edge_moe.model_config import MoEConfig

SLOT_ALIGNMENT = 256  # bytes; each part of a slot starts at a multiple (kernels read 16-bit words)
PARTS = ("gate", "up", "down")


def quantized_expert_bytes(gguf: GGUFFile, cfg: MoEConfig) -> int:
    """Bytes of one expert (gate + up + down) as stored in the GGUF: what a miss reads from DRAM."""
    return sum(gguf.tensor(f"blk.0.ffn_{k}_exps.weight").nbytes for k in PARTS) // cfg.n_expert


def slot_part_nbytes(gguf: GGUFFile, cfg: MoEConfig) -> tuple[int, int, int]:
    """Bytes of a slot's gate, up and down: the largest over layers (types may vary by layer)."""
    return tuple(max(gguf.tensor(f"blk.{il}.ffn_{k}_exps.weight").nbytes // cfg.n_expert
                     for il in range(cfg.n_layer)) for k in PARTS)  # type: ignore[return-value]


def slot_nbytes(gguf: GGUFFile, cfg: MoEConfig) -> int:
    """Device bytes of one cache slot: the expert's GGUF bytes, each part aligned."""
    return sum(-(-n // SLOT_ALIGNMENT) * SLOT_ALIGNMENT for n in slot_part_nbytes(gguf, cfg))


def expert_byte_range(t: GGUFTensor, expert: int) -> slice:
    """Where one expert's raw block bytes sit in a stacked [n_expert, rows, cols] GGUF tensor's bytes."""
    per = t.nbytes // t.shape[2]
    return slice(expert * per, (expert + 1) * per)


def expert_bytes_view(t: GGUFTensor, expert: int) -> np.ndarray:
    """One expert's raw block bytes of a stacked [n_expert, rows, cols] GGUF tensor (mmap view)."""
    return t.data[expert_byte_range(t, expert)]
