"""Hit compute: the FFNs of experts whose GGUF bytes are in device slots (`HitCompute`).

A mixin of `gpu_experts.GpuExperts`: it computes from a slot table [T, k] (-1: not in a slot)
whatever filled the slots, the cache's hits or the prefill stream ring's experts.

"triton" kernels (the default on CUDA): the hits of a layer with few tokens each run as two
launches over all (token, expert) pairs (quant_ops.glu_pairs, then scatter_pairs);
fused_ffn.py's one-launch kernel is opt-in (EDGE_MOE_FUSED_FFN=1). From GROUPED_MIN_TOKENS
tokens on, Q4_0 / Q8_0 layers run their hits as two launches of the grouped tile kernels
(edge_moe/grouped_kernels.py), but for experts with DEQUANT_OVER_GROUPED_TOKENS tokens or
more; those, and in other formats any expert used by many tokens (`dequant_min_tokens`), are
dequantized into a scratch matrix and multiplied with torch.
"reference" dequantizes the slot's bytes with gguf.quants on the host (the CPU device in
tests, and any type the kernels do not read).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from edge_moe.dense_weights import tensor_to_numpy
from edge_moe.gguf_file import GGUFTensor
from edge_moe.model_config import MoEConfig

if TYPE_CHECKING:
    from edge_moe.gpu_slots import SlotStore
    from edge_moe.quant_ops import QuantizedX

# A cached expert used by enough tokens of one call is dequantized once and multiplied as a
# matrix; fewer tokens read its blocks once per token (matvec kernels, all pairs in two
# launches). The matrix path costs ~12 launches and ~0.15 ms of host time per expert (H100
# box, Qwen3 prefill profile) whatever its size; the matvec path costs the expert's bytes per
# token at the kernels' ~0.6 TB/s. So small experts (Qwen3's 2.65 MB: ~34 tokens) stay on the
# matvec path much longer than large ones (Mixtral's 99 MB: from DEQUANT_MIN_TOKENS on).
DEQUANT_MIN_TOKENS = 8
DEQUANT_HOST_S, MATVEC_BYTES_PER_S = 150e-6, 0.6e12
# From this many tokens in a call, layers whose experts are Q4_0 / Q8_0 take the grouped
# kernels (edge_moe/grouped_kernels.py) for all their hits: one tile of up to 64 pairs reads
# an expert once. Below it (decode, short prompts) the matvec / dequantize paths above.
GROUPED_MIN_TOKENS = 16
# ...except experts with this many tokens or more, which are dequantized once + cuBLAS: each
# tile of 64 pairs dequantizes its expert again in registers, while that path's cost is mostly
# fixed per expert. Measured (H100, session 12, 512-token prompt): Mixtral's ~128 tokens an
# expert (2-3 tiles) 2.63 ms a layer grouped against 3.46 ms dequantized + cuBLAS, so ~0.13 ms
# a tile against ~0.43 ms an expert; by that, not measured, the two meet near 4 tiles for
# Mixtral-sized experts. Small experts have a larger margin (the dequantize path's ~0.15 ms of
# host time each), and reach this only from ~4096-token calls at Qwen3's 128 experts top-8.
DEQUANT_OVER_GROUPED_TOKENS = 256


def _to_device(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host index table on the device without a host wait: on CUDA it goes through pinned
    memory (torch's caching host allocator keeps the block until the copy is done), so the
    host goes on enqueueing instead of waiting for the queue to drain (a pageable copy waits:
    ~8 such waits a streamed layer of a Qwen3 prefill, session 11)."""
    t = torch.from_numpy(host)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def dequant_min_tokens(expert_bytes: int) -> int:
    """Tokens of one call from which a cached expert takes the dequantize + matmul path."""
    return max(DEQUANT_MIN_TOKENS, math.ceil(DEQUANT_HOST_S * MATVEC_BYTES_PER_S / expert_bytes))


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


class HitCompute:
    """The hit compute paths of `GpuExperts`, which sets the attributes below (`_init_kernels`
    the kernels' own, where the Triton kernels are used)."""

    cfg: MoEConfig
    device: torch.device
    dtype: torch.dtype
    store: "SlotStore | None"
    _tensors: list[tuple[GGUFTensor, ...]]  # per layer: the GGUF tensors (gate, up, down)
    _dequant_min: int  # dequant_min_tokens of the model's experts
    _scratch: torch.Tensor | None

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
        self._device_resident = os.environ.get("EDGE_MOE_DEVICE_RESIDENT") != "0"
        from edge_moe.fused_ffn import fused_for

        self._fused = [fused_for(g, u, d) for g, u, d in self._layouts]

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
                  y: torch.Tensor, hq: "QuantizedX | None" = None) -> None:
        """y[row_p] += w_flat[idx_p] * FFN_p(h[row_p]) for the pairs p of the table pairs [5, P]
        (device int64, `pair_table`'s layout); y float32 [T, E]. Two launches for all pairs, or
        one where the fused kernel is on for the layer (fused_ffn.fused_for). hq: h quantized
        already (quant_ops.quantize_x's values), read by the gate+up launch of the int8 formats."""
        from edge_moe.quant_ops import glu_pairs, matvec_pairs, scatter_pairs

        gate, up, down = self._layouts[layer]
        if self._fused[layer]:
            from edge_moe.fused_ffn import fused_ffn_pairs

            fused_ffn_pairs(self._buf, gate, down, pairs, h, w_flat, y)
            return
        if gate == up:
            act = glu_pairs(self._buf, gate, up, pairs[0], pairs[1], h, pairs[3], hq)
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
            dev = _to_device(host.astype(np.int64), h.device)
            self.pairs_ffn(layer, h, weights.reshape(-1), dev, y)
        if big.any():
            self._compute_dequantized(layer, h, weights, slot[big], tok[big], (tok * k + j)[big], y)

    def _compute_dequantized(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slot: np.ndarray,
                             tok: np.ndarray, widx: np.ndarray, y: torch.Tensor) -> None:
        """y += the pairs (slot, token row, weight index) [P] of experts many tokens use: each
        expert dequantized once into the scratch matrix and multiplied with torch. The pairs are
        gathered once, sorted by slot, and scattered once, so an expert costs 8 launches (its 3
        dequantizations, 3 matmuls, the activation), not ~15. (A Mixtral all-GPU prompt runs
        ~105 ms of GPU work in ~180-250 ms; this alone did not change its speed: 2833 -> 2770-2823
        tok/s, ABAB, session 11 call H. What else keeps the GPU idle is not measured yet.)"""
        gate, up, down = self._layouts[layer]
        order = np.argsort(slot, kind="stable")
        slot_sorted = slot[order]
        uniq, first, counts = np.unique(slot_sorted, return_index=True, return_counts=True)
        rows, wi = _to_device(np.stack([tok[order], widx[order]]), h.device)  # [P] each, one copy
        hs = h[rows]  # [P, E] grouped by slot
        out = torch.empty((hs.shape[0], self.cfg.n_embd), dtype=h.dtype, device=h.device)  # [P, E]
        for s, lo, n in zip(uniq.tolist(), first.tolist(), counts.tolist()):
            base = s * self._stride
            x = hs[lo:lo + n]  # [n, E]
            a = F.linear(x, self._dequantized(gate, base + int(self._part_offsets[0, 0])))  # [n, F]
            b = F.linear(x, self._dequantized(up, base + int(self._part_offsets[1, 0])))
            a = F.silu(a, inplace=True).mul_(b)
            torch.matmul(a, self._dequantized(down, base + int(self._part_offsets[2, 0])).t(), out=out[lo:lo + n])
        y.index_add_(0, rows, out.float().mul_(weights.reshape(-1)[wi].float()[:, None]))

    def resident_on_device(self, layer: int, n_tokens: int) -> bool:
        """Whether `compute_resident` takes this call: a resident layer (every expert cached for
        good) of grouped-kernel types, with enough tokens for the grouped kernels, and experts
        that would not each take the dequantize + matmul path. EDGE_MOE_DEVICE_RESIDENT=0: never."""
        return (n_tokens >= GROUPED_MIN_TOKENS and self.layer_resident(layer)  # type: ignore[attr-defined]
                and self._device_resident and self._grouped[layer]  # (set where layer_resident can be true)
                and n_tokens * self.cfg.n_expert_used < DEQUANT_OVER_GROUPED_TOKENS * self.cfg.n_expert)

    def compute_resident(self, layer: int, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                         ) -> torch.Tensor:
        """sum over (t, j) of weights[t, j] * FFN_{ids[t, j]}(h[t]) -> [T, E] (h's dtype) for a
        resident layer, from device ids and weights [T, k]: tiles built on the device, so the
        host never waits for the router (a 512-token all-GPU prefill waited once a layer)."""
        from edge_moe.grouped_kernels import device_tile_table, tile_config

        e, f = self.cfg.n_embd, self.cfg.n_ff_expert
        bases, part_offsets = self.resident_bases(layer)  # type: ignore[attr-defined]
        n_pairs = ids.numel()
        config = tile_config(-(-n_pairs // self.cfg.n_expert), e, f)  # by the mean: the max is unknown
        tables = device_tile_table(ids, self.cfg.n_expert, config[0], bases, part_offsets)
        y = torch.zeros((h.shape[0], e), dtype=torch.float32, device=h.device)  # [T, E]
        self._grouped_launch(layer, tables, weights, h, y, config)
        return y.to(h.dtype)  # (the caller counts the hits: a graph's body runs once for many calls)

    def _compute_grouped(self, layer: int, h: torch.Tensor, weights: torch.Tensor, slot: np.ndarray,
                         tok: np.ndarray, widx: np.ndarray, y: torch.Tensor) -> None:
        """y += every pair (slot, token row, weight index) [P] through the grouped kernels: one
        launch for gate/up, one for down, over tiles of pairs sharing an expert."""
        from edge_moe.grouped_kernels import tile_config, tile_table

        config = tile_config(int(np.bincount(slot).max()), self.cfg.n_embd, self.cfg.n_ff_expert)
        tile_slot, start, count, ptok, pwidx = tile_table(slot, tok, widx, config[0])
        n_tiles = tile_slot.shape[0]
        # one host->device copy: [gate, up, down byte offsets, start, count] x tiles, then token, weight index x pairs
        host = np.concatenate([(tile_slot[None] * self._stride + self._part_offsets).reshape(-1), start, count,
                               ptok, pwidx]).astype(np.int64)
        dev = _to_device(host, h.device)
        n3 = 3 * n_tiles
        tile_off = dev[:n3]
        tile_start = dev[n3:n3 + n_tiles].to(torch.int32)
        tile_count = dev[n3 + n_tiles:n3 + 2 * n_tiles].to(torch.int32)
        pair_tok = dev[n3 + 2 * n_tiles:n3 + 2 * n_tiles + ptok.shape[0]].to(torch.int32)
        pair_widx = dev[n3 + 2 * n_tiles + ptok.shape[0]:]
        self._grouped_launch(layer, (tile_off, tile_start, tile_count, pair_tok, pair_widx), weights, h, y, config)

    def _grouped_launch(self, layer: int, tables: tuple[torch.Tensor, ...], weights: torch.Tensor, h: torch.Tensor,
                        y: torch.Tensor, config: tuple[int, ...]) -> None:
        """grouped_ffn on the layer's slots: tables (tile_off, tile_start, tile_count, pair_tok,
        pair_widx) from tile_table or device_tile_table, config tile_config's (BT, BN, NB, warps,
        stages)."""
        from edge_moe.grouped_kernels import grouped_ffn

        gate, _, down = self._layouts[layer]
        grouped_ffn(self._buf.words, gate.ggml_type, down.ggml_type, self.cfg.n_embd,
                    self.cfg.n_ff_expert, gate.row_bytes, down.row_bytes, *tables, weights.reshape(-1),
                    h.contiguous(), y, *config)

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

