"""Experts cached on the accelerator: slot storage, lookups, hit compute and admissions.

The bookkeeping (sets, ways, replacement, admission) is `ExpertCache`; the storage is a
`SlotStore` (one device tensor allocated once; fills on a side CUDA stream through pinned
staging, ordered by events: a slot is read only after its fill completed and refilled only
after the kernels that read it). A slot holds one expert's gate [F, E], up [F, E] and
down [E, F], dequantized on the host to the compute dtype (quantized slots and kernels are
the next issue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from edge_moe.dense_weights import tensor_to_numpy
from edge_moe.gguf_file import GGUFFile, GGUFTensor
from edge_moe.model_config import MoEConfig

if TYPE_CHECKING:
    from edge_moe.expert_cache import CacheConfig, ExpertCache
    from edge_moe.gpu_slots import SlotStore


@dataclass(frozen=True)
class GpuExpertsConfig:
    cache: "CacheConfig"
    preload: str = "none"  # "none" | "all": fill every slot before the first token (layer-major)

    def __post_init__(self) -> None:
        if self.preload not in ("none", "all"):
            raise ValueError(f"preload must be 'none' or 'all', got {self.preload!r}")


def quantized_expert_bytes(gguf: GGUFFile, cfg: MoEConfig) -> int:
    """Bytes of one expert (gate + up + down) as stored in the GGUF: what a miss reads from DRAM."""
    return sum(gguf.tensor(f"blk.0.ffn_{k}_exps.weight").nbytes for k in ("gate", "up", "down")) // cfg.n_expert


def slot_nbytes(cfg: MoEConfig, dtype: str) -> int:
    """Bytes of one cache slot: the expert dequantized to the compute dtype (quantized slots
    are the next issue; until then a slot costs 2-4x the expert's GGUF size)."""
    return 3 * cfg.n_embd * cfg.n_ff_expert * torch.empty(0, dtype=getattr(torch, dtype)).element_size()


def expert_matrix(t: GGUFTensor, expert: int) -> np.ndarray:
    """One expert's matrix of a stacked [n_expert, rows, cols] GGUF tensor, as float32 [rows, cols]."""
    n_expert = t.shape[2]
    per = t.nbytes // n_expert
    one = GGUFTensor(t.name, t.ggml_type, t.shape[:2], t.offset + expert * per, per,
                     t.data[expert * per:(expert + 1) * per])
    return tensor_to_numpy(one)


class GpuExperts:
    """No cache (config None): every lookup misses and nothing is ever filled."""

    def __init__(self, gguf: GGUFFile, cfg: MoEConfig, device: torch.device, dtype: torch.dtype,
                 config: GpuExpertsConfig | None) -> None:
        self.gguf, self.cfg, self.device, self.dtype, self.config = gguf, cfg, device, dtype, config
        e, f = cfg.n_embd, cfg.n_ff_expert
        self._sizes = (f * e, f * e, e * f)
        self.cache: "ExpertCache | None" = None
        self.store: "SlotStore | None" = None
        if config is not None:
            from edge_moe.expert_cache import ExpertCache
            from edge_moe.gpu_slots import SlotStore

            self.expert_bytes = quantized_expert_bytes(gguf, cfg)
            self.cache = ExpertCache(config.cache, cfg.n_layer, cfg.n_expert, self.expert_bytes)
            esize = torch.empty(0, dtype=dtype).element_size()
            self.store = SlotStore(self.cache.n_slots, [n * esize for n in self._sizes], device)
            shapes = ((f, e), (f, e), (e, f))
            # typed views of every slot, made once: (gate [F, E], up [F, E], down [E, F])
            self._slot_views = [tuple(part.view(dtype).view(shape) for part, shape in zip(self.store.parts(i), shapes))
                                for i in range(self.cache.n_slots)]
            if config.preload == "all":
                self._preload_all()

    def _fill(self, slot: int, layer: int, expert: int) -> None:
        """Dequantize the expert on the host and copy it into `slot` on the side stream."""
        assert self.store is not None
        np_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype if self.dtype != torch.bfloat16 else None
        parts = []
        for k in ("gate", "up", "down"):
            m = expert_matrix(self.gguf.tensor(f"blk.{layer}.ffn_{k}_exps.weight"), expert)
            parts.append(m.astype(np_dtype) if np_dtype is not None else torch.from_numpy(m).to(self.dtype))
        self.store.fill(slot, parts)

    def _preload_all(self) -> None:
        """Fill every way: experts in order, layer by layer, as long as their set has room."""
        assert self.cache is not None
        room = [self.cache.n_ways] * self.cache.n_sets
        plan = []
        for expert in range(self.cfg.n_expert):
            for layer in range(self.cfg.n_layer):
                s = layer % self.cache.n_sets
                if room[s]:
                    room[s] -= 1
                    plan.append((layer, expert))
        for d in self.cache.preload(plan):
            self._fill(d.slot, d.layer, d.expert)

    # ---- per layer ---------------------------------------------------------------------

    def begin_step(self) -> None:
        if self.cache is not None:
            self.cache.begin_token()

    def end_step(self) -> None:
        if self.cache is not None:
            self.cache.end_token()

    def lookup(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """Slots [T, k] of the routed experts, -1 where not cached; hit slots stay pinned
        until `after_layer`, so this layer's admissions cannot evict them."""
        if self.cache is None:
            return np.full(ids.shape, -1, dtype=np.int64)
        out = np.empty(ids.shape, dtype=np.int64)
        for idx, expert in np.ndenumerate(ids):
            slot = self.cache.lookup(layer, int(expert))
            out[idx] = -1 if slot is None else slot
            if slot is not None:
                self.cache.pin(slot)
        return out

    def compute(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
        """sum over cached (t, j) of weights[t, j] * FFN_slot(h[t]) -> [T, E] (zeros elsewhere)."""
        assert self.store is not None
        y = torch.zeros_like(h)
        for slot in np.unique(slots[slots >= 0]):
            slot = int(slot)
            tok, j = np.nonzero(slots == slot)
            rows = torch.as_tensor(tok, device=h.device)
            self.store.wait_filled(slot)  # the compute stream waits for the slot's fill, if any
            gate, up, down = self._slot_views[slot]
            hs = h[rows]  # [n, E]
            out = F.linear(F.silu(F.linear(hs, gate)) * F.linear(hs, up), down)  # [n, E]
            w = weights[rows, torch.as_tensor(j, device=h.device)].to(h.dtype)[:, None]
            y.index_add_(0, rows, out * w)
            self.store.mark_read(slot)  # a later refill of this slot waits for these kernels
        return y

    def after_layer(self, layer: int, ids: np.ndarray, slots: np.ndarray) -> None:
        """Offer this layer's misses to the admission policy and fill what it admits, then
        unpin the layer's hits (pinned until now, so these admissions cannot evict them)."""
        if self.cache is None:
            return
        for expert in np.unique(ids[slots < 0]):
            decision = self.cache.admit(layer, int(expert))
            if decision is not None:
                self._fill(decision.slot, layer, int(expert))
        for slot in slots[slots >= 0]:
            self.cache.unpin(int(slot))

    def close(self) -> None:
        if self.store is not None:
            self.store.synchronize()
        self.store = None
        self._slot_views = []
