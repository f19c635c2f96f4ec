"""A human-readable summary of a GGUF MoE model (what `edge-moe inspect` prints)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edge_moe.gguf_file import GGUFFile
from edge_moe.model_config import MoEConfig, read_config


def expert_bytes(gguf: GGUFFile, cfg: MoEConfig) -> int:
    """Bytes of one routed expert (gate + up + down) in layer 0, in its stored type."""
    total = 0
    for kind in ("gate", "up", "down"):
        total += gguf.tensor(f"blk.0.ffn_{kind}_exps.weight").nbytes // cfg.n_expert
    return total


def describe_gguf(path: Path) -> str:
    with GGUFFile(path) as gguf:
        cfg = read_config(gguf)
        types = Counter(t.type_name for t in gguf.tensors.values() if "_exps" in t.name)
        size = sum(t.nbytes for t in gguf.tensors.values())
        exp = expert_bytes(gguf, cfg)
        lines = [
            f"{path}: GGUF v{gguf.version}, {len(gguf.tensors)} tensors, {size / 2**20:.1f} MiB of weights",
            f"  architecture   {cfg.arch}  ({cfg.n_layer} layers, n_embd {cfg.n_embd}, vocab {cfg.n_vocab})",
            f"  attention      {cfg.n_head} heads, {cfg.n_head_kv} KV heads, head_dim {cfg.head_dim}, "
            f"rope {cfg.traits.rope.value} base {cfg.rope_freq_base:g}, norm {cfg.traits.norm.value} "
            f"eps {cfg.norm_eps:g}",
            f"  experts        {cfg.n_expert} x n_ff {cfg.n_ff_expert}, top-{cfg.n_expert_used}, "
            f"gating {cfg.gating.value}, renormalise top-k {cfg.normalize_topk}"
            + (f", {cfg.n_shared_expert} shared expert(s) of n_ff {cfg.n_ff_shared}" if cfg.n_ff_shared else ""),
            f"  expert types   {dict(types)}; one expert = {exp / 2**20:.2f} MiB",
        ]
        return "\n".join(lines)
