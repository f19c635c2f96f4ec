"""Small synthetic MoE GGUFs written with gguf-py's writer (a reference we did not write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter


def write_moe_gguf(path: Path, arch: str = "llama", n_expert: int = 4, n_embd: int = 64, n_ff: int = 32,
                   n_layer: int = 1, extra: dict | None = None) -> Path:
    """A structurally complete (random-weight) MoE GGUF of `arch`; `extra` adds or overrides keys."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(256)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    w.add_token_list([f"t{i}" for i in range(32)])
    for key, (kind, value) in (extra or {}).items():
        getattr(w, f"add_{kind}")(key, value)
    w.add_tensor("token_embd.weight", rng.standard_normal((32, n_embd), dtype=np.float32))
    for i in range(n_layer):
        if n_expert:
            w.add_tensor(f"blk.{i}.ffn_gate_exps.weight",
                         rng.standard_normal((n_expert, n_ff, n_embd), dtype=np.float32))
            w.add_tensor(f"blk.{i}.ffn_down_exps.weight",
                         rng.standard_normal((n_expert, n_embd, n_ff), dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
