"""Experts cached on the accelerator: slot storage, lookups, hit compute and admissions.

The bookkeeping (sets, ways, replacement, admission) is `ExpertCache`; the storage is a
`SlotStore` (one device tensor allocated once; fills on a side CUDA stream through pinned
staging, ordered by events: a slot is read only after its fill completed and refilled only
after the kernels that read it). A slot holds one expert's gate [F, E], up [F, E] and
down [E, F] exactly as the GGUF stores them (block-quantized bytes): a fill is a copy, and
the budget counts quantized bytes (the sizes: edge_moe/expert_bytes.py).

Hit compute (the "triton" kernels, the default on CUDA: matvec pairs, grouped tiles or
dequantize + matmul; "reference" on the host) is the `HitCompute` mixin, edge_moe/hit_compute.py.

Prefill streaming: a *missed* expert that many tokens of one call use is cheaper to copy
to the GPU and compute there than to compute on the CPU (the CPU's time grows with the
tokens, the copy's does not: `stream_threshold`). Such experts go, in groups of up to half
the ring, through a ring of `stream_slots` extra slots of the same SlotStore (never cache
slots: the cache's contents do not change; `stream_rule.stream_slots_for`) and each group is
computed by the same code as hits, in one pass. The copy of the next group overlaps the
compute of the current one: fills run on the store's side stream, ordered by its events (a
ring slot is refilled only after the kernels that read it). The executor gives the other
misses to the CPU as usual. With no cache configured, a CUDA device still gets the ring
(`GpuExperts` builds a stream-only config when VRAM has room). Decode steps may stream some
misses too (`GpuExpertsConfig.decode_stream`). Both are the `ExpertStreaming` mixin,
edge_moe/expert_streaming.py.

Pinned layers (`CacheConfig.pinned_layers`): their slots are filled at construction and
never evicted; `layer_resident` tells the decode graphs which layers need no host, and
`resident_bases` gives them the slot offsets to route on the device (route_kernels.py).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from edge_moe.expert_bytes import (PARTS, SLOT_ALIGNMENT, expert_byte_range, expert_bytes_view, quantized_expert_bytes, slot_nbytes,
                                   slot_part_nbytes)
from edge_moe.gguf_file import GGUFFile
from edge_moe.expert_streaming import ExpertStreaming
from edge_moe.hit_compute import HitCompute, _use_triton, dequant_min_tokens
from edge_moe.model_config import MoEConfig
from edge_moe.stream_rule import stream_slots_for, stream_threshold, stream_vram_bytes, zero_copy_enabled

if TYPE_CHECKING:
    from edge_moe.expert_cache import CacheConfig, ExpertCache
    from edge_moe.gpu_slots import SlotStore
    from edge_moe.host_register import RegisteredExperts

# Free VRAM left beside the ring and its scratch before a stream-only config is built.
STREAM_VRAM_MARGIN = 512 << 20


@dataclass(frozen=True)
class GpuExpertsConfig:
    cache: "CacheConfig | None"  # None: no cache slots, only the prefill stream ring
    preload: str = "none"  # "none" | "all": fill every slot before the first token (layer-major)
    kernels: str = "auto"  # "auto" (triton on CUDA, else reference) | "triton" | "reference"
    # device slots of the prefill stream ring (two groups); None: stream_slots_for; 0: never stream
    stream_slots: int | None = None
    # A missed expert used by at least this many tokens of one call is streamed to the GPU.
    # None: `stream_threshold` on CUDA, never on a CPU device (tests set it to force streaming).
    stream_min_tokens: int | None = None
    # Page-lock the GGUF bytes of the layers whose experts are filled or streamed after start-up
    # (not the pinned ones), so those copies are direct DMAs (edge_moe/host_register.py).
    # None: on CUDA when `register_bytes_allowed`; False: through pinned staging copies.
    register_host: bool | None = None
    # Decode steps: of a host layer's m missed experts, decode_stream[min(m, len - 1)] are copied
    # to the ring and computed on the GPU while the CPU computes the others (the copy and the
    # CPU's reads overlap). None: none (the planner sets it: cost_model.MachineFigures.stream_split).
    decode_stream: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.decode_stream is not None and not all(0 <= s <= m for m, s in enumerate(self.decode_stream)):
            raise ValueError(f"decode_stream[m] must be in 0..m, got {self.decode_stream}")
        if self.preload not in ("none", "all"):
            raise ValueError(f"preload must be 'none' or 'all', got {self.preload!r}")
        if self.kernels not in ("auto", "triton", "reference"):
            raise ValueError(f"kernels must be auto, triton or reference, got {self.kernels!r}")
        if self.stream_slots is not None and self.stream_slots < 0:
            raise ValueError(f"stream_slots must be >= 0, got {self.stream_slots}")
        if self.stream_min_tokens is not None and self.stream_min_tokens < 1:
            raise ValueError(f"stream_min_tokens must be >= 1, got {self.stream_min_tokens}")
        if self.cache is None and self.stream_slots == 0:
            raise ValueError("no cache and no stream slots: nothing on the GPU (use no GpuExpertsConfig)")
        if self.cache is None and self.preload != "none":
            raise ValueError("preload needs a cache")


def _stream_only_config(gguf: GGUFFile, cfg: MoEConfig, device: torch.device,
                        dtype: torch.dtype) -> GpuExpertsConfig | None:
    """No cache configured: on CUDA, the stream ring alone when free VRAM holds it, else None."""
    if device.type != "cuda":
        return None
    need = stream_vram_bytes(slot_nbytes(gguf, cfg), cfg.n_embd, cfg.n_ff_expert, dtype.itemsize)
    free, _ = torch.cuda.mem_get_info(device)
    if free < need + STREAM_VRAM_MARGIN:
        warnings.warn(f"prefill streaming off: {need / 2**20:.0f} MiB of stream slots do not fit in "
                      f"{free / 2**20:.0f} MiB of free VRAM", stacklevel=3)
        return None
    return GpuExpertsConfig(cache=None)


class GpuExperts(HitCompute, ExpertStreaming):
    """No config on a CPU device: every lookup misses, nothing is filled or streamed. No
    config on CUDA: a stream-only config (`_stream_only_config`) when VRAM allows."""

    def __init__(self, gguf: GGUFFile, cfg: MoEConfig, device: torch.device, dtype: torch.dtype,
                 config: GpuExpertsConfig | None) -> None:
        if config is None:
            config = _stream_only_config(gguf, cfg, device, dtype)
        self.gguf, self.cfg, self.device, self.dtype, self.config = gguf, cfg, device, dtype, config
        self.cache: "ExpertCache | None" = None
        self.store: "SlotStore | None" = None
        self._unwaited: set[int] = set()  # slots filled since the compute stream last waited for them
        self._resident_bases: torch.Tensor | None = None  # resident_pair_table's slot offsets
        self._resident_every = False  # _resident_bases covers every layer (not only the pinned)
        self._resident_slot_table: np.ndarray | None = None  # [n_layer, n_expert] host slots (`_resident_slots`)
        self._resident_slots_every = False
        self._retired_bases: list[torch.Tensor] = []
        self._part_offsets_dev: torch.Tensor | None = None
        self.stream_min_tokens: int | None = None  # None: streaming off
        self._registered: "RegisteredExperts | None" = None  # page-locked expert bytes (_register_host)
        self.n_streamed = 0  # experts streamed so far (each one copy of expert_bytes over PCIe)
        self.n_streamed_decode = 0  # of them, in decode steps (`stream_decode`)
        self._next_half = 0  # the ring half the next decode step's streamed experts take
        self._decode_stream_on = os.environ.get("EDGE_MOE_DECODE_STREAM", "1") != "0"  # 0: off (A/B runs)
        self._zero_copy = zero_copy_enabled()
        # the stream the executor computes on, looked up once: torch.cuda.current_stream costs ~10 us
        # of host time a call, and the decode step asked for it ~3 times a layer (H100 box, session 12)
        self._compute = torch.cuda.current_stream(device) if device.type == "cuda" else None
        if config is not None:
            from edge_moe.expert_cache import ExpertCache
            from edge_moe.gpu_slots import SlotStore

            self.expert_bytes = quantized_expert_bytes(gguf, cfg)
            self._dequant_min = dequant_min_tokens(self.expert_bytes)
            n_cache = 0
            if config.cache is not None:
                self.cache = ExpertCache(config.cache, cfg.n_layer, cfg.n_expert, self.expert_bytes)
                n_cache = self.cache.n_slots
            # the stream ring: the slots after the cache's
            n_ring = stream_slots_for(slot_nbytes(gguf, cfg)) if config.stream_slots is None else config.stream_slots
            self._ring = list(range(n_cache, n_cache + n_ring))
            self.store = SlotStore(n_cache + n_ring, slot_part_nbytes(gguf, cfg), device,
                                   n_staging=max(2, n_ring // 2), alignment=SLOT_ALIGNMENT)
            # per layer: the GGUF tensors (gate, up, down) and their ggml types
            self._tensors = [tuple(gguf.tensor(f"blk.{il}.ffn_{k}_exps.weight") for k in PARTS)
                             for il in range(cfg.n_layer)]
            types = {int(t.ggml_type) for ts in self._tensors for t in ts}
            self.use_triton = _use_triton(config.kernels, device, types)
            if self.use_triton:
                self._init_kernels()
            self._scratch: torch.Tensor | None = None
            self.stream_min_tokens = self._stream_rule(config)
            self._registered = self._register_host(config)
            if self.cache is not None:  # pinned layers: every expert copied in now, never evicted
                for d in self.cache.pinned_contents():
                    self._fill(d.slot, d.layer, d.expert)
            if config.preload == "all":
                self._preload_all()
            self._unlock_if_resident()

    def _stream_rule(self, config: GpuExpertsConfig) -> int | None:
        """Tokens per call from which a missed expert is streamed; None: never."""
        if not self._ring:
            return None
        if config.stream_min_tokens is not None:
            return config.stream_min_tokens
        if self.device.type != "cuda" or not self.use_triton:
            return None  # a CPU device, or the host-dequantizing reference path: the CPU is faster
        return stream_threshold(self.expert_bytes, self.cfg.n_embd, self.cfg.n_ff_expert)

    def _register_host(self, config: GpuExpertsConfig) -> "RegisteredExperts | None":
        """Page-lock the expert bytes of every layer that is not pinned (module docstring of
        host_register.py), or None: off, nothing to fill after start-up, or refused."""
        from edge_moe.host_register import RegisteredExperts, register_bytes_allowed

        layers = range(self.cfg.n_layer if self.cache is None else self.cache.first_pinned)
        self._host_views: dict[int, list[torch.Tensor]] = {}
        self._host_ptrs: dict[int, list[tuple[int, int]]] = {}
        if (config.register_host is False or self.device.type != "cuda" or not layers
                or (self.cache is None or self.cache.n_slots == 0) and self.stream_min_tokens is None):
            return None
        arrays = [t.data for il in layers for t in self._tensors[il]]
        if config.register_host is None and not register_bytes_allowed(sum(a.nbytes for a in arrays)):
            return None
        try:
            registered = RegisteredExperts(arrays)
        except RuntimeError as e:  # fills still work, through pinned staging
            warnings.warn(f"{self.gguf.path}: {e}; expert copies go through staging buffers", stacklevel=3)
            return None
        views = iter(registered.views)
        self._host_views = {il: [next(views) for _ in PARTS] for il in layers}
        # (address of expert 0, bytes per expert) of each part: decode streaming's raw copies
        self._host_ptrs = {il: [(v.data_ptr(), t.nbytes // t.shape[2]) for v, t in zip(vs, self._tensors[il])]
                           for il, vs in self._host_views.items()}
        return registered

    def _unlock_if_resident(self) -> None:
        """Once every expert is cached nothing is filled again: unlock the registered pages (after
        the DMAs in flight that read them)."""
        if self._registered is not None and self.all_resident():
            assert self.store is not None
            self.store.synchronize()
            self._registered.close()
            self._registered, self._host_views, self._host_ptrs = None, {}, {}

    def _expert_parts(self, layer: int, expert: int) -> list[np.ndarray] | list[torch.Tensor]:
        """The expert's GGUF bytes (gate, up, down): page-locked torch views when the layer is
        registered (direct DMA), else views of the memory map."""
        views = self._host_views.get(layer)
        if views is None:
            return [expert_bytes_view(t, expert) for t in self._tensors[layer]]
        return [v[expert_byte_range(t, expert)] for v, t in zip(views, self._tensors[layer])]

    def _fill(self, slot: int, layer: int, expert: int) -> None:
        """Copy the expert's GGUF bytes into `slot` (on the side stream on CUDA)."""
        assert self.store is not None
        self.store.fill(slot, self._expert_parts(layer, expert))
        self._unwaited.add(slot)

    def _preload_all(self) -> None:
        """Fill every way: experts in order, layer by layer, as long as their set has room."""
        assert self.cache is not None
        room = [self.cache.n_ways] * self.cache.n_sets
        plan = []
        for expert in range(self.cfg.n_expert):
            for layer in range(self.cache.first_pinned):  # the pinned layers are full already
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
            self._unlock_if_resident()

    def lookup(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """Slots [T, k] of the routed experts, -1 where not cached; hit slots stay pinned
        until `after_layer`, so this layer's admissions cannot evict them."""
        if self.cache is None:
            return np.full(ids.shape, -1, dtype=np.int64)  # [T, k]
        if not self.serves(layer):  # no slot can hold it: every lookup a miss, nothing to pin
            self.count_unserved(layer, ids.size)
            return np.full(ids.shape, -1, dtype=np.int64)
        if self.layer_resident(layer):
            # every expert cached for good: a table read, no pins (nothing can evict them) and no
            # admission statistics (nothing of this layer is ever admitted); per-pair Python here
            # cost ~1.9 ms a layer of a 512-token prefill (H100 box, Qwen3 24 GiB, session 10)
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.n_expert):
                raise ValueError(f"expert ids of layer {layer} out of range 0..{self.cfg.n_expert - 1}")
            self.count_resident_hits(range(layer, layer + 1), ids.size)
            return self._resident_slots()[layer][ids]  # [T, k]
        return np.array(self.cache.lookup_and_pin(layer, ids.reshape(-1).tolist()), dtype=np.int64).reshape(ids.shape)

    def _resident_slots(self) -> np.ndarray:
        """The resident layers' slot per expert [n_layer, n_expert] (host; -1 for the other layers),
        built on first use and again once every expert is cached. `lookup` reads it, and
        `resident_bases` makes the device's table of byte offsets from it."""
        assert self.cache is not None
        every = self.all_resident()
        if self._resident_slot_table is None or (every and not self._resident_slots_every):
            table = np.full((self.cfg.n_layer, self.cfg.n_expert), -1, dtype=np.int64)
            for slot, (lay, expert) in self.cache.contents().items():
                if every or self.cache.is_pinned_layer(lay):
                    table[lay, expert] = slot
            self._resident_slot_table, self._resident_slots_every = table, every
        return self._resident_slot_table

    def compute(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slots: np.ndarray,
                ids: np.ndarray | None = None, streamed: np.ndarray | None = None) -> torch.Tensor:
        """sum over cached (t, j) of weights[t, j] * FFN_slot(h[t]), plus the same over the
        `streamed` (t, j) [T, k] of expert ids[t, j] -> [T, E] (zeros elsewhere)."""
        assert self.store is not None
        accumulate = self._compute_triton if self.use_triton else self._compute_reference
        y = torch.zeros((h.shape[0], self.cfg.n_embd), dtype=torch.float32, device=h.device)  # [T, E]
        used = self.wait_hits(slots)
        if used.size:
            accumulate(layer, h, weights, slots, y)
            self.mark_hits_read(used)
        if streamed is not None and streamed.any():
            assert ids is not None
            self._compute_streamed(layer, h, weights, ids, streamed, y)
        return y.to(h.dtype)

    def wait_hits(self, slots: np.ndarray) -> np.ndarray:
        """Make the compute stream wait for the fills of the hit slots; returns them (unique).
        A slot's fill is waited for once: later readers on the same stream come after that wait."""
        assert self.store is not None
        used = np.unique(slots[slots >= 0])
        if self._unwaited:
            for slot in used.tolist():
                if slot in self._unwaited:
                    self.store.wait_filled(slot, self._compute)
                    self._unwaited.discard(slot)
        return used

    def mark_hits_read(self, used: np.ndarray) -> None:
        """After the kernels reading `used` were enqueued: a later refill of them waits for these."""
        assert self.store is not None
        self.store.mark_read_many(used, self._compute)

    def all_resident(self) -> bool:
        """Every expert of every layer is cached (then no lookup can miss, nothing is evicted)."""
        return (self.cache is not None and self.use_triton
                and self.cache.n_cached == self.cfg.n_layer * self.cfg.n_expert)

    def count_unserved(self, layer: int, n: int) -> None:
        """What `lookup` records for `n` routed experts of a layer it does not serve (all misses),
        for a caller that skips the lookup there."""
        if self.cache is not None:
            self.cache.stats.misses_by_layer[layer] += n

    def serves(self, layer: int) -> bool:
        """Some slot can hold an expert of `layer`: it is pinned, or the cache has sets (which
        serve every layer not pinned). A layer it does not serve runs on the CPU with no lookup."""
        return self.cache is not None and (self.cache.n_sets > 0 or self.cache.is_pinned_layer(layer))

    def layer_resident(self, layer: int) -> bool:
        """Every expert of `layer` is cached for good (a pinned layer, or every expert of the
        model cached): its lookups cannot miss, so a CUDA graph can route it on the device."""
        return (self.cache is not None and self.use_triton
                and (self.cache.is_pinned_layer(layer) or self.all_resident()))

    def resident_pair_table(self, layer: int, ids: torch.Tensor) -> torch.Tensor:
        """`pair_table` built on the device from routed ids [T, k] (device int64) of a resident
        layer (`layer_resident`): no host round trip, so a CUDA graph can hold it."""
        bases, part_offsets = self.resident_bases(layer)
        flat = ids.reshape(-1)  # [P]
        pair = torch.arange(flat.shape[0], device=flat.device)
        offsets = bases.index_select(0, flat)[None, :] + part_offsets  # [3, P]
        return torch.cat([offsets, (pair // ids.shape[1])[None], pair[None]])  # [5, P]

    def resident_bases(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A resident layer's slot byte offsets [n_expert] (int64, device) and the parts' offsets
        within a slot [3, 1]. The first call (and the first after every expert became cached)
        builds the [n_layer, n_expert] table of the resident layers, and the compute stream waits
        for the fills still in flight (none can come later for these layers: nothing of theirs
        is evicted)."""
        assert self.cache is not None and self.store is not None
        every = self.all_resident()
        if self._resident_bases is None or (every and not self._resident_every):
            assert self.layer_resident(layer)
            slots = self._resident_slots()
            table = np.where(slots >= 0, slots * self._stride, -1)
            for slot in sorted(self._unwaited):  # simpler than picking the resident layers' slots
                self.store.wait_filled(slot)
            self._unwaited.clear()
            self._resident_every = every
            if self._resident_bases is not None:  # graphs captured earlier still read the old table
                self._retired_bases.append(self._resident_bases)
            self._resident_bases = torch.from_numpy(table).to(self.device)  # [n_layer, n_expert]
            self._part_offsets_dev = torch.from_numpy(self._part_offsets).to(self.device)  # [3, 1]
        assert self._part_offsets_dev is not None
        return self._resident_bases[layer], self._part_offsets_dev

    def count_resident_hits(self, layers: range, pairs: int | None = None) -> None:
        """Statistics of resident layers (every routed expert a hit): `pairs` routed (token,
        expert) pairs in each layer (None: one token's, n_expert_used)."""
        assert self.cache is not None
        for layer in layers:
            self.cache.stats.hits_by_layer[layer] += self.cfg.n_expert_used if pairs is None else pairs

    def after_layer(self, layer: int, ids: np.ndarray, slots: np.ndarray) -> None:
        """Offer this layer's misses to the admission policy and fill what it admits, then
        unpin the layer's hits (pinned until now, so these admissions cannot evict them)."""
        if self.cache is None or not self.serves(layer) or self.layer_resident(layer):
            return  # (a resident layer's lookup pinned nothing and missed nothing)
        for expert in np.unique(ids[slots < 0]):
            decision = self.cache.admit(layer, int(expert))
            if decision is not None:
                self._fill(decision.slot, layer, int(expert))
        self.cache.unpin_many(slots[slots >= 0].tolist())

    def close(self) -> None:
        if self.store is not None:
            self.store.close()  # waits for the fills in flight, stops the copy threads
        self.store = None
        if self._registered is not None:  # after the fills that read its pages
            self._registered.close()
            self._registered = None
