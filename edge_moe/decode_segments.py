"""The segments a decode token's CUDA graphs hold (`DecodeSegments`, a mixin of
edge_moe/decode_graphs.py's `DecodeGraphs`, which owns the buffers, captures and replays).

    prologue   rope tables, attention mask and embedding of the token (from step_in)
    front      the residual adds the previous layer left, attention, the FFN norm, routing:
               for a host layer the routed row goes to pinned memory for the host; for a
               resident layer the pair table stays on the device
    experts    the hits from the pair table (+ the shared expert) -> y_gpu
    head       the last residual adds, output norm and LM head -> logits

Every tensor they read or write is one of DecodeGraphs' buffers, allocated once, so a graph
captured from a segment replays on the next token's data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from edge_moe.archs.common import RopeTables, rope_tables

if TYPE_CHECKING:
    from edge_moe.executor import HybridModel
    from edge_moe.quant_ops import QuantizedX


class DecodeSegments:
    # DecodeGraphs' buffers and switches (decode_graphs.py sets them)
    m: "HybridModel"
    positions: torch.Tensor
    token: torch.Tensor
    rope: RopeTables
    _masks: dict[int, torch.Tensor]
    x_in: torch.Tensor
    x: list[torch.Tensor]
    x_mid: torch.Tensor
    h_attn: torch.Tensor
    h: torch.Tensor
    y_gpu: torch.Tensor
    y_cpu: torch.Tensor
    y_cpu_host: torch.Tensor
    weights: torch.Tensor
    ids: torch.Tensor
    pairs: torch.Tensor
    pairs_host: torch.Tensor
    routed: torch.Tensor
    routed_host: torch.Tensor
    forced: torch.Tensor
    logits: torch.Tensor
    _fused_norm: bool
    hq_attn: "QuantizedX | None"
    hq: "QuantizedX | None"
    _fused_route: bool

    def _resident_layers(self, start: int, end: int, length: int, forced: bool, adds: tuple[bool, bool]) -> None:
        for il in range(start, end):
            # the first layer adds what the host layer before it left; the others their predecessor's hits
            cleared = self._front(il, length, forced, adds if il == start else (True, False), resident=True)
            self._experts(il, cleared=cleared)

    def _all_layers(self, length: int, forced: bool) -> None:
        for il in range(self.m.cfg.n_layer):
            cleared = self._front(il, length, forced, (True, False), resident=True)
            self._experts(il, cleared=cleared)

    # ---- segments (captured) -------------------------------------------------------------

    def _prologue(self, length: int) -> None:
        """The token's rope tables, attention mask (KV bucket `length`) and embedding, from
        step_in (position, token) on the device."""
        m = self.m
        tables = rope_tables(m.cfg, m.ops.rope, self.positions, m.dtype)
        self.rope.cos.copy_(tables.cos)
        self.rope.sin.copy_(tables.sin)
        self._masks[length].copy_(m.attention_mask(self.positions, length))
        self.x_in.copy_(m.embed(self.token))

    def _front(self, il: int, length: int, forced: bool, adds: tuple[bool, bool], resident: bool = False) -> bool:
        """adds: (y_gpu, y_cpu) the previous layer left (`_residual`). resident: a layer whose
        experts are all cached, inside a graph of such layers: the routing stays on the device
        instead of going to the host. Returns whether it zeroed y_gpu for the experts (the fused
        routing launch does, after this front's own add of y_gpu)."""
        m = self.m
        if self._fused_norm:  # x_mid = x + adds, h_attn = norm(x_mid); x' = x_mid + attention, h = norm(x')
            from edge_moe.norm_kernels import add_rms_norm

            lw, eps = m.dense.layers[il], m.cfg.norm_eps
            gpu_in, cpu_in = adds if il > 0 else (False, False)
            add_rms_norm(self.x_in if il == 0 else self.x[il % 2], self.y_gpu if gpu_in else None,
                         self._y_cpu_in() if cpu_in else None, lw.attn_norm, eps, self.x_mid, self.h_attn, self.hq_attn)
            out = m.attention(il, self.h_attn, self.rope, self.positions, self._masks[length], self.hq_attn)  # [1, E]
            add_rms_norm(self.x_mid, out, None, lw.ffn_norm, eps, self.x[(il + 1) % 2], self.h, self.hq)
        else:
            x = self.x_in if il == 0 else self._residual(self.x[il % 2], *adds)
            x, h = m.front(il, x, self.rope, self.positions, self._masks[length])
            self.x[(il + 1) % 2].copy_(x)
            self.h.copy_(h)
        if not forced and self._fused_route:  # one launch: routing, weights, and the pair table or the host's row
            from edge_moe.route_kernels import route_pack, route_pairs

            cfg, router = m.cfg, m.dense.layers[il].router
            if resident:  # the router's GEMV too, in the same launch
                bases, parts = m.gpu.resident_bases(il)
                route_pairs(self.h, router, cfg.n_expert_used, cfg.normalize_topk, cfg.expert_weights_scale, bases,
                            parts.view(-1), self.weights, self.ids, self.pairs, clear=self.y_gpu)
                return True
            logits = torch.nn.functional.linear(self.h, router)  # [1, n_expert], as m.route
            route_pack(logits, self.h, cfg.n_expert_used, cfg.normalize_topk, cfg.expert_weights_scale,
                       self.weights, self.routed)
            self.routed_host.copy_(self.routed, non_blocking=True)
            return False
        logits, weights, ids = m.route(il, self.h, self.forced[il] if forced else None)
        self.weights.copy_(weights)
        if not resident:
            routed = torch.cat([ids.float(), weights.float(), logits.float(), self.h.float()], dim=1)  # [1, cols]
            self.routed_host.copy_(routed, non_blocking=True)
        else:
            self.ids.copy_(ids)
            self.pairs.copy_(m.gpu.resident_pair_table(il, self.ids))  # [5, k]
        return False

    def _experts(self, il: int, host_pairs: bool = False, cleared: bool = False) -> None:
        """y_gpu (float32) = the hits (+ the shared expert); host_pairs: the host wrote the pair
        table (pinned); cleared: the front's routing launch zeroed y_gpu already. The kernels add
        into y_gpu itself, and its readers round it to the model dtype (as a cast here did):
        no temporary, fill and cast kernels a layer."""
        m = self.m
        if host_pairs:
            self.pairs.copy_(self.pairs_host, non_blocking=True)
        if not cleared:
            self.y_gpu.zero_()
        if m.gpu.cache is not None:
            m.gpu.pairs_ffn(il, self.h, self.weights.view(-1), self.pairs, self.y_gpu, self.hq)
        lw = m.dense.layers[il]
        if lw.shexp_gate is not None:
            self.y_gpu.copy_(self.y_gpu.to(m.dtype) + m.shared_expert(lw, self.h))

    def _head(self, gpu_in: bool, cpu_in: bool) -> None:
        self.logits.copy_(self.m.head(self._residual(self.x[self.m.cfg.n_layer % 2], gpu_in, cpu_in)))

    def _residual(self, x: torch.Tensor, gpu_in: bool, cpu_in: bool) -> torch.Tensor:
        """x [1, E] plus what the previous layer's experts left: y_gpu and / or y_cpu (`_y_cpu_in`),
        each in x's dtype first."""
        if not cpu_in:
            return x + self.y_gpu.to(x.dtype) if gpu_in else x
        y_cpu = self._y_cpu_in().to(x.dtype)
        return x + ((self.y_gpu.to(x.dtype) + y_cpu) if gpu_in else y_cpu)

    def _y_cpu_in(self) -> torch.Tensor:
        """y_cpu [1, E] float32 on the device: the last host layer's CPU share, copied from pinned
        memory inside the segment being captured (no eager copy on the host's path)."""
        self.y_cpu.copy_(self.y_cpu_host, non_blocking=True)
        return self.y_cpu
