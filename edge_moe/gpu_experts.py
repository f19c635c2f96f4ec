"""Experts cached on the accelerator: slot storage, lookups, hit compute and admissions.

The bookkeeping (sets, ways, replacement, admission) is `ExpertCache`; the storage is a
`SlotStore` (one device tensor allocated once; fills on a side CUDA stream through pinned
staging, ordered by events: a slot is read only after its fill completed and refilled only
after the kernels that read it). A slot holds one expert's gate [F, E], up [F, E] and
down [E, F] exactly as the GGUF stores them (block-quantized bytes): a fill is a copy, and
the budget counts quantized bytes.

Hit compute ("triton" kernels, the default on CUDA): the hits of a layer with few tokens
each run as two launches over all (token, expert) pairs (quant_ops.glu_pairs, then
scatter_pairs); fused_ffn.py's one-launch kernel is opt-in (EDGE_MOE_FUSED_FFN=1). From GROUPED_MIN_TOKENS tokens on, Q4_0 / Q8_0 layers run their hits
as two launches of the grouped tile kernels (edge_moe/grouped_kernels.py), but for experts
with DEQUANT_OVER_GROUPED_TOKENS tokens or more; those, and in other formats any expert used
by many tokens, are dequantized into a scratch matrix and multiplied with torch.
"reference" dequantizes the slot's bytes with gguf.quants on the host (the CPU device in
tests, and any type the kernels do not read).

Prefill streaming: a *missed* expert that many tokens of one call use is cheaper to copy
to the GPU and compute there than to compute on the CPU (the CPU's time grows with the
tokens, the copy's does not: `stream_threshold`). Such experts go, in groups of up to half
the ring, through a ring of `stream_slots` extra slots of the same SlotStore (never cache
slots: the cache's contents do not change; `stream_rule.stream_slots_for`) and each group is
computed by the same code as hits, in one pass. The copy of the next group overlaps the
compute of the current one: fills run on the store's side stream, ordered by its events (a
ring slot is refilled only after the kernels that read it). The executor gives the other
misses to the CPU as usual. With no cache configured, a CUDA device still gets the ring
(`GpuExperts` builds a stream-only config when VRAM has room).

Pinned layers (`CacheConfig.pinned_layers`): their slots are filled at construction and
never evicted; `layer_resident` tells the decode graphs which layers need no host, and
`resident_bases` gives them the slot offsets to route on the device (route_kernels.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from edge_moe.dense_weights import tensor_to_numpy
from edge_moe.gguf_file import GGUFFile, GGUFTensor
from edge_moe.model_config import MoEConfig
from edge_moe.stream_rule import stream_slots_for, stream_threshold, stream_vram_bytes

if TYPE_CHECKING:
    from edge_moe.expert_cache import CacheConfig, ExpertCache
    from edge_moe.gpu_slots import SlotStore

SLOT_ALIGNMENT = 256  # bytes; each part of a slot starts at a multiple (kernels read 16-bit words)
# Free VRAM left beside the ring and its scratch before a stream-only config is built.
STREAM_VRAM_MARGIN = 512 << 20
# A cached expert used by enough tokens of one call is dequantized once and multiplied as a
# matrix; fewer tokens read its blocks once per token (matvec kernels, all pairs in two
# launches). The matrix path costs ~12 launches and ~0.15 ms of host time per expert (H100
# box, Qwen3 prefill profile) whatever its size; the matvec path costs the expert's bytes per
# token at the kernels' ~0.6 TB/s. So small experts (Qwen3's 2.65 MB: ~34 tokens) stay on the
# matvec path much longer than large ones (Mixtral's 99 MB: from DEQUANT_MIN_TOKENS on).
DEQUANT_MIN_TOKENS = 8
DEQUANT_HOST_S, MATVEC_BYTES_PER_S = 150e-6, 0.6e12
# From this many tokens in a call, layers whose experts are Q4_0 / Q8_0 take the grouped
# kernels (edge_moe/grouped_kernels.py) for all their hits: one tile of 16 pairs reads an
# expert once. Below it (decode, short prompts) the matvec / dequantize paths above.
GROUPED_MIN_TOKENS = 16
# ...except experts with this many tokens or more: a tile re-reads its expert once per 16 of
# them, while dequantizing once + cuBLAS reads it once (Mixtral 32 GiB prefill, ~128 tokens an
# expert: grouped-only 0.18-0.24x of llama.cpp, dequantize-only 0.30x in session 3).
DEQUANT_OVER_GROUPED_TOKENS = 64


def dequant_min_tokens(expert_bytes: int) -> int:
    """Tokens of one call from which a cached expert takes the dequantize + matmul path."""
    return max(DEQUANT_MIN_TOKENS, math.ceil(DEQUANT_HOST_S * MATVEC_BYTES_PER_S / expert_bytes))


PARTS = ("gate", "up", "down")


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

    def __post_init__(self) -> None:
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


def expert_bytes_view(t: GGUFTensor, expert: int) -> np.ndarray:
    """One expert's raw block bytes of a stacked [n_expert, rows, cols] GGUF tensor (mmap view)."""
    per = t.nbytes // t.shape[2]
    return t.data[expert * per:(expert + 1) * per]


def _use_triton(choice: str, device: torch.device, types: set[int]) -> bool:
    if choice == "reference" or (choice == "auto" and device.type != "cuda"):
        return False
    from edge_moe.quant_ops import SUPPORTED_TYPES

    missing = types - SUPPORTED_TYPES
    if missing:
        msg = f"expert types {sorted(missing)} have no GPU kernel; cached experts run the slow reference path"
        if choice == "triton":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)
        return False
    return True


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


class GpuExperts:
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
        self._retired_bases: list[torch.Tensor] = []
        self._part_offsets_dev: torch.Tensor | None = None
        self.stream_min_tokens: int | None = None  # None: streaming off
        self.n_streamed = 0  # experts streamed so far (each one copy of expert_bytes over PCIe)
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
            if self.cache is not None:  # pinned layers: every expert copied in now, never evicted
                for d in self.cache.pinned_contents():
                    self._fill(d.slot, d.layer, d.expert)
            if config.preload == "all":
                self._preload_all()

    def _stream_rule(self, config: GpuExpertsConfig) -> int | None:
        """Tokens per call from which a missed expert is streamed; None: never."""
        if not self._ring:
            return None
        if config.stream_min_tokens is not None:
            return config.stream_min_tokens
        if self.device.type != "cuda" or not self.use_triton:
            return None  # a CPU device, or the host-dequantizing reference path: the CPU is faster
        return stream_threshold(self.expert_bytes, self.cfg.n_embd, self.cfg.n_ff_expert)

    def _init_kernels(self) -> None:
        from edge_moe.quant_ops import QuantBuffer, QuantMatrix

        assert self.store is not None
        e, f = self.cfg.n_embd, self.cfg.n_ff_expert
        self._buf = QuantBuffer(self.store.storage.view(-1))
        shapes = ((f, e), (f, e), (e, f))
        self._layouts = [tuple(QuantMatrix(int(t.ggml_type), *shape) for t, shape in zip(ts, shapes))
                         for ts in self._tensors]
        stride, offs = self.store.slot_stride, self.store.part_offsets
        self._part_offsets = np.array(offs, dtype=np.int64)[:, None]  # [3, 1]
        self._stride = stride
        from edge_moe.grouped_kernels import grouped_supported

        self._grouped = [grouped_supported(g.ggml_type, u.ggml_type, d.ggml_type, e, f) for g, u, d in self._layouts]
        from edge_moe.fused_ffn import fused_for

        self._fused = [fused_for(g, u, d) for g, u, d in self._layouts]

    def _fill(self, slot: int, layer: int, expert: int) -> None:
        """Copy the expert's GGUF bytes into `slot` (on the side stream on CUDA)."""
        assert self.store is not None
        self.store.fill(slot, [expert_bytes_view(t, expert) for t in self._tensors[layer]])
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

    def lookup(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """Slots [T, k] of the routed experts, -1 where not cached; hit slots stay pinned
        until `after_layer`, so this layer's admissions cannot evict them."""
        if self.cache is None:
            return np.full(ids.shape, -1, dtype=np.int64)  # [T, k]
        if not self.serves(layer):  # no slot can hold it: every lookup a miss, nothing to pin
            self.cache.stats.misses_by_layer[layer] += ids.size
            return np.full(ids.shape, -1, dtype=np.int64)
        return np.array(self.cache.lookup_and_pin(layer, ids.reshape(-1).tolist()), dtype=np.int64).reshape(ids.shape)

    def stream_plan(self, ids: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """[T, k] bool: the misses computed on the GPU from streamed bytes in this call (their
        expert is used by at least `stream_min_tokens` of its tokens); the CPU does the rest."""
        n = self.stream_min_tokens
        if n is None or ids.shape[0] < n:
            return np.zeros(ids.shape, dtype=bool)
        uses = np.bincount(ids[~hit], minlength=self.cfg.n_expert)  # [n_expert] missed uses
        return ~hit & (uses >= n)[ids]

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

    def _compute_streamed(self, layer: int, h: torch.Tensor, weights: torch.Tensor, ids: np.ndarray,
                          streamed: np.ndarray, y: torch.Tensor) -> None:
        """The streamed experts through the ring, in groups of half the ring: fill a group (one
        job, `SlotStore.fill_many`), compute it as hits of its ring slots (one pass of the hit
        kernels), free it. The next group is filled into the other half while this one is
        computed; a ring slot's refill waits on the device for the kernels that read it
        (mark_read), never on the host."""
        assert self.store is not None
        accumulate = self._compute_triton if self.use_triton else self._compute_reference
        experts = np.unique(ids[streamed])
        half = max(1, len(self._ring) // 2)
        groups = [experts[i:i + half] for i in range(0, len(experts), half)]

        double = len(self._ring) >= 2 * half  # a one-slot ring fills each group after the last one's reads

        def ring_slots(g: int) -> list[int]:  # group g's slots: one half of the ring, alternating
            base = (g % 2) * half if double else 0
            return self._ring[base:base + len(groups[g])]

        def issue(g: int) -> None:
            self.store.fill_many([(slot, [expert_bytes_view(t, int(e)) for t in self._tensors[layer]])
                                  for slot, e in zip(ring_slots(g), groups[g])])

        if double:
            issue(0)
        for g, group in enumerate(groups):
            if not double:
                issue(g)
            elif g + 1 < len(groups):
                issue(g + 1)
            slots = ring_slots(g)
            table = np.full(ids.shape, -1, dtype=np.int64)  # [T, k]: this group's pairs as hits
            for slot, expert in zip(slots, group):
                table[streamed & (ids == expert)] = slot
                self.store.wait_filled(slot)
            accumulate(layer, h, weights, table, y)
            self.store.mark_read_many(slots)
        self.n_streamed += len(experts)

    def wait_hits(self, slots: np.ndarray) -> np.ndarray:
        """Make the compute stream wait for the fills of the hit slots; returns them (unique).
        A slot's fill is waited for once: later readers on the same stream come after that wait."""
        assert self.store is not None
        used = np.unique(slots[slots >= 0])
        if self._unwaited:
            for slot in used.tolist():
                if slot in self._unwaited:
                    self.store.wait_filled(slot)
                    self._unwaited.discard(slot)
        return used

    def mark_hits_read(self, used: np.ndarray) -> None:
        """After the kernels reading `used` were enqueued: a later refill of them waits for these."""
        assert self.store is not None
        self.store.mark_read_many(used)

    def all_resident(self) -> bool:
        """Every expert of every layer is cached (then no lookup can miss, nothing is evicted)."""
        return (self.cache is not None and self.use_triton
                and self.cache.n_cached == self.cfg.n_layer * self.cfg.n_expert)

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
            table = np.full((self.cfg.n_layer, self.cfg.n_expert), -1, dtype=np.int64)
            for slot, (lay, expert) in self.cache.contents().items():
                if every or self.cache.is_pinned_layer(lay):
                    table[lay, expert] = slot * self._stride
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

    def count_resident_hits(self, layers: range) -> None:
        """Statistics of resident layers run without lookups (every routed expert hit)."""
        assert self.cache is not None
        for layer in layers:
            self.cache.stats.hits_by_layer[layer] += self.cfg.n_expert_used

    def pair_table(self, slots: np.ndarray, out: np.ndarray) -> None:
        """Every (token, j) of slots [T, k] as a column of out [5, T * k] for `pairs_ffn`: byte
        offsets of gate, up, down (-1 for a miss: the kernels skip that pair), token row, index
        into the flat weights. A fixed-size table, so a CUDA graph can replay the same launch."""
        flat = slots.reshape(-1)  # [P]
        hit = flat >= 0
        out[:3] = np.where(hit, flat * self._stride + self._part_offsets, -1)
        out[3] = np.arange(flat.size) // slots.shape[1]
        out[4] = np.arange(flat.size)

    def pairs_ffn(self, layer: int, h: torch.Tensor, w_flat: torch.Tensor, pairs: torch.Tensor,
                  y: torch.Tensor) -> None:
        """y[row_p] += w_flat[idx_p] * FFN_p(h[row_p]) for the pairs p of the table pairs [5, P]
        (device int64, `pair_table`'s layout); y float32 [T, E]. Two launches for all pairs, or
        one where the fused kernel is on for the layer (fused_ffn.fused_for)."""
        from edge_moe.quant_ops import glu_pairs, matvec_pairs, scatter_pairs

        gate, up, down = self._layouts[layer]
        if self._fused[layer]:
            from edge_moe.fused_ffn import fused_ffn_pairs

            fused_ffn_pairs(self._buf, gate, down, pairs, h, w_flat, y)
            return
        if gate == up:
            act = glu_pairs(self._buf, gate, up, pairs[0], pairs[1], h, pairs[3])
        else:  # gate and up in different types: two plain launches
            g = matvec_pairs(self._buf, gate, pairs[0], h, pairs[3])
            act = F.silu(g) * matvec_pairs(self._buf, up, pairs[1], h, pairs[3])
        scatter_pairs(self._buf, down, pairs[2], act, w_flat, pairs[4], pairs[3], y)

    def _compute_triton(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slots: np.ndarray,
                        y: torch.Tensor) -> None:
        """y [T, E] float32 += the FFNs of the slots in `slots` [T, k] (-1: not here)."""
        gate, up, down = self._layouts[layer]
        k = slots.shape[1]
        tok, j = np.nonzero(slots >= 0)
        slot = slots[tok, j]
        grouped = h.shape[0] >= GROUPED_MIN_TOKENS and self._grouped[layer]
        uses = np.bincount(slot, minlength=self.store.n_slots) if slot.size else np.zeros(0, np.int64)
        threshold = DEQUANT_OVER_GROUPED_TOKENS if grouped else self._dequant_min  # tokens of a "big" slot
        big = uses[slot] >= threshold if slot.size else np.zeros(0, bool)
        if grouped and (~big).any():  # the grouped tile kernels, two launches for all these pairs
            self._compute_grouped(layer, h, weights, slot[~big], tok[~big], (tok * k + j)[~big], y)
        elif (~big).any():  # pairs of rarely used slots: matvec kernels, two launches for all
            t, jj, s = tok[~big], j[~big], slot[~big]
            # one host->device copy: byte offsets of gate/up/down [3, P], token [P], weight index [P]
            host = np.concatenate([s[None] * self._stride + self._part_offsets, t[None], (t * k + jj)[None]])
            dev = torch.from_numpy(host.astype(np.int64)).to(h.device, non_blocking=False)
            self.pairs_ffn(layer, h, weights.reshape(-1), dev, y)
        for s in np.unique(slot[big]):  # slots used by many tokens: dequantize once, matmul
            rows_np, jj = np.nonzero(slots == s)
            rows = torch.as_tensor(rows_np, device=h.device)
            hs = h[rows]  # [n, E]
            base = int(s) * self._stride
            a = F.linear(hs, self._dequantized(gate, base + int(self._part_offsets[0, 0])))
            b = F.linear(hs, self._dequantized(up, base + int(self._part_offsets[1, 0])))
            out = F.linear(F.silu(a) * b, self._dequantized(down, base + int(self._part_offsets[2, 0])))  # [n, E]
            w = weights[rows, torch.as_tensor(jj, device=h.device)].float()[:, None]
            y.index_add_(0, rows, out.float() * w)

    def _compute_grouped(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slot: np.ndarray,
                         tok: np.ndarray, widx: np.ndarray, y: torch.Tensor) -> None:
        """y += every pair (slot, token row, weight index) [P] through the grouped kernels: one
        launch for gate/up, one for down, over tiles of pairs sharing an expert."""
        from edge_moe.grouped_kernels import grouped_ffn, tile_table

        gate, _, down = self._layouts[layer]
        tile_slot, start, count, ptok, pwidx = tile_table(slot, tok, widx)
        n_tiles = tile_slot.shape[0]
        # one host->device copy: [gate, up, down byte offsets, start, count] x tiles, then token, weight index x pairs
        host = np.concatenate([(tile_slot[None] * self._stride + self._part_offsets).reshape(-1), start, count,
                               ptok, pwidx]).astype(np.int64)
        dev = torch.from_numpy(host).to(h.device)
        n3 = 3 * n_tiles
        tile_off = dev[:n3]
        tile_start = dev[n3:n3 + n_tiles].to(torch.int32)
        tile_count = dev[n3 + n_tiles:n3 + 2 * n_tiles].to(torch.int32)
        pair_tok = dev[n3 + 2 * n_tiles:n3 + 2 * n_tiles + ptok.shape[0]].to(torch.int32)
        pair_widx = dev[n3 + 2 * n_tiles + ptok.shape[0]:]
        grouped_ffn(self._buf.bytes, self._buf.words, gate.ggml_type, down.ggml_type, self.cfg.n_embd,
                    self.cfg.n_ff_expert, gate.row_bytes, down.row_bytes, tile_off, tile_start, tile_count,
                    pair_tok, pair_widx, weights.reshape(-1), h.contiguous(), y)

    def _dequantized(self, m: "object", byte_offset: int) -> torch.Tensor:
        """The matrix at `byte_offset` dequantized into the scratch buffer (valid until the next call)."""
        from edge_moe.quant_ops import dequantize

        n = m.n_rows * m.n_cols  # type: ignore[attr-defined]
        if self._scratch is None or self._scratch.numel() < n:
            self._scratch = torch.empty(self.cfg.n_embd * self.cfg.n_ff_expert, dtype=self.dtype, device=self.device)
        return dequantize(self._buf, m, byte_offset, self._scratch[:n].view(m.n_rows, m.n_cols))  # type: ignore

    def _compute_reference(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slots: np.ndarray,
                           y: torch.Tensor) -> None:
        """y [T, E] float32 += the same, each used slot's bytes dequantized on the host (gguf.quants)."""
        assert self.store is not None
        e, f = self.cfg.n_embd, self.cfg.n_ff_expert
        for slot in np.unique(slots[slots >= 0]):
            tok, j = np.nonzero(slots == slot)
            rows = torch.as_tensor(tok, device=h.device)
            mats = []
            for t, part, shape in zip(self._tensors[layer], self.store.parts(int(slot)), ((f, e), (f, e), (e, f))):
                raw = part[:t.nbytes // self.cfg.n_expert].cpu().numpy()
                one = GGUFTensor(t.name, t.ggml_type, (shape[1], shape[0]), 0, raw.size, raw)
                mats.append(torch.from_numpy(tensor_to_numpy(one)).to(h.device, h.dtype))
            gate, up, down = mats
            hs = h[rows]  # [n, E]
            out = F.linear(F.silu(F.linear(hs, gate)) * F.linear(hs, up), down)  # [n, E]
            w = weights[rows, torch.as_tensor(j, device=h.device)].to(h.dtype)[:, None]
            y.index_add_(0, rows, (out * w).float())

    def after_layer(self, layer: int, ids: np.ndarray, slots: np.ndarray) -> None:
        """Offer this layer's misses to the admission policy and fill what it admits, then
        unpin the layer's hits (pinned until now, so these admissions cannot evict them)."""
        if self.cache is None or not self.serves(layer):
            return
        for expert in np.unique(ids[slots < 0]):
            decision = self.cache.admit(layer, int(expert))
            if decision is not None:
                self._fill(decision.slot, layer, int(expert))
        self.cache.unpin_many(slots[slots >= 0].tolist())

    def close(self) -> None:
        if self.store is not None:
            self.store.close()  # waits for the fills in flight, stops the copy threads
        self.store = None
