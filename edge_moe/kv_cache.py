"""Static KV cache: one K and one V buffer per layer, allocated once (gpt-fast style)."""

from __future__ import annotations

import torch

from edge_moe.errors import EdgeMoeError


class KVCache:
    def __init__(self, n_layer: int, max_ctx: int, n_kv_head: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        if max_ctx <= 0:
            raise ValueError(f"context length must be positive, got {max_ctx}")
        self.max_ctx = max_ctx
        self.k = torch.zeros(n_layer, max_ctx, n_kv_head, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0  # tokens already stored

    def check_room(self, n_new: int) -> None:
        if self.pos + n_new > self.max_ctx:
            raise EdgeMoeError(f"context full: {self.pos} tokens stored + {n_new} new > context length "
                               f"{self.max_ctx} (raise -c)")

    def store(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [T, KV, D] at `positions` [T] (a device tensor: no host sync, so a CUDA
        graph can replay it at any position); return the first `length` keys/values [S, KV, D]."""
        self.k[layer].index_copy_(0, positions, k)
        self.v[layer].index_copy_(0, positions, v)
        return self.keys_values(layer, length)

    def keys_values(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` keys and values [S, KV, D] of a layer (views)."""
        return self.k[layer, :length], self.v[layer, :length]

    def advance(self, n: int) -> None:
        self.pos += n

    def truncate(self, n: int) -> None:
        """Forget everything after the first n tokens (the buffers keep their memory)."""
        self.pos = min(self.pos, max(0, n))
