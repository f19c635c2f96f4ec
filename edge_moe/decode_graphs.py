"""One decode token (T = 1) as two CUDA graphs per layer, the host deciding in between.

Eager PyTorch pays 10-40 us of host time per kernel launch; a layer's attention alone is
~25 launches, so eager decode was host-bound (H100, Qwen3-30B shape: ~2 ms of host time per
layer against ~0.1 ms of GPU work). Here each layer is:

    front[il]    graph: x + y of the previous layer, attention (KV length bucketed), FFN norm,
                 router, top-k; ids, weights, router logits and h copied to pinned host memory
    sync         the one host wait per layer (as in the eager path)
    host         cache lookup -> pair table (pinned)
    experts[il]  graph: the pair table's copy to the device, every hit (pair table rows of
                 misses hold offset -1: the kernels skip them) from the quantized slots, plus
                 the shared expert -> y_gpu
    CPU          ggml computes the misses meanwhile -> y_cpu (pinned); the next segment's graph
                 copies it to the device first
    fills        admissions on the side stream, as in the eager path

A layer's experts leave y_gpu (a hit or a shared expert) and y_cpu (a miss), either or both;
the segment after it (the next front, a run of resident layers, the head) adds exactly those,
one captured variant per combination, so no eager launch zeroes what a layer did not write:
each eager launch or copy cost 25-45 us of host time on the H100 box (session 10).

Before the layers, a "prologue" graph (one per KV bucket) makes the token's rope tables,
attention mask and embedding from its position and id, which arrive in one copy from pinned
memory.

A resident layer (every expert cached for good: a pinned layer, `ExpertCache`) needs no
host: a run of consecutive resident layers is one graph, routing and pair tables on the device
(edge_moe/route_kernels.py: one launch), and no sync before the next host layer's front. When every expert of
the model is cached, the whole token is one graph.

Everything that crosses a graph boundary lives in buffers allocated once; the residual
stream alternates between two of them layer by layer. The first use of a graph runs it
eagerly (Triton compiles, cuBLAS picks its kernels; its results are the token's), then
captures it for the next tokens; a capture executes nothing.
The attended KV length is rounded up to a power of two (at least 256, at most n_ctx): a
layer has at most log2(n_ctx / 256) + 2 front graphs, each captured on first use; masked
positions past the token cost reads, not correctness. All graphs share one memory pool:
their temporaries die inside the graph and segments never run concurrently.

The segments' bodies (prologue, front, experts, head) are edge_moe/decode_segments.py.
`capture=False` runs the same segments eagerly on the same buffers: on the CPU device the
tests exercise this exact loop (everything but the capture) against llama.cpp.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from edge_moe.archs.common import RopeTables, rms_norm, rope_tables
from edge_moe.decode_segments import DecodeSegments
from edge_moe.graph_cache import GraphCache

if TYPE_CHECKING:
    from edge_moe.executor import HybridModel
    from edge_moe.quant_ops import QuantizedX

MIN_BUCKET = 256  # smallest attended KV length of a front graph


def kv_bucket(n: int, n_ctx: int) -> int:
    """The KV length a front graph attends for a context of n tokens: a power of two >= n."""
    return min(n_ctx, max(MIN_BUCKET, 1 << (n - 1).bit_length()))


class DecodeGraphs(DecodeSegments):
    def __init__(self, model: "HybridModel", capture: bool) -> None:
        gpu = model.gpu
        if gpu.cache is not None and not gpu.use_triton:
            raise ValueError("decode graphs need the Triton expert kernels (the reference path works on the host)")
        self.m = model
        cfg, dev, dt = model.cfg, model.device, model.dtype
        e, k, n_pairs = cfg.n_embd, cfg.n_expert_used, cfg.n_expert_used

        def host(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, pin_memory=dev.type == "cuda")

        # device side: the token's embedding, then the residual stream alternating between x[0]
        # and x[1] layer by layer; no segment writes what it reads, so running one twice (warm-up,
        # then capture and replay) gives the same result
        self.x_in = torch.zeros((1, e), dtype=dt, device=dev)  # [1, E]
        self.x = [torch.zeros((1, e), dtype=dt, device=dev) for _ in range(2)]  # [1, E]
        self.h = torch.zeros((1, e), dtype=dt, device=dev)  # [1, E] FFN input of the current layer
        # [1, E] hits + shared expert: float32, the kernels' accumulator; readers round it to dt
        self.y_gpu = torch.zeros((1, e), dtype=torch.float32, device=dev)
        self.y_cpu = torch.zeros((1, e), dtype=torch.float32, device=dev)  # [1, E] misses
        # the token's position and id, written by one copy from pinned memory; the prologue graph
        # turns them into rope tables, the attention mask and the embedding
        self.step_in = torch.zeros(2, dtype=torch.int64, device=dev)  # [position, token]
        self.positions, self.token = self.step_in[:1], self.step_in[1:]  # [1], [1]
        tables = rope_tables(cfg, model.ops.rope, self.positions, dt)
        self.rope = RopeTables(tables.cos.clone(), tables.sin.clone(), tables.perm)  # rewritten per token
        self._masks: dict[int, torch.Tensor] = {}  # KV bucket -> [group, bucket] bool, rewritten per token
        self.weights = torch.zeros((1, k), dtype=torch.float32, device=dev)  # [1, k]
        self.pairs = torch.full((5, n_pairs), -1, dtype=torch.int64, device=dev)  # gpu_experts.pair_table
        self.ids = torch.zeros((1, k), dtype=torch.int64, device=dev)  # routed ids, resident mode
        self.resident = False  # every expert cached: a token is one graph (set on first use)
        self.runs = 0  # graphs of resident layers run so far (`_resident_run`)
        # resident layers route and build their pair table in one Triton launch, host layers route
        # and pack the host's row in one (route_kernels.py; EDGE_MOE_FUSED_ROUTE=0: torch's softmax /
        # topk, the torch pair table and cat)
        self._fused_route = (getattr(gpu, "use_triton", False) and gpu.cache is not None
                             and os.environ.get("EDGE_MOE_FUSED_ROUTE", "1") != "0")
        # residual adds and RMSNorms of a front in two Triton launches (norm_kernels.py) where the
        # norms are bias-free RMSNorms (EDGE_MOE_FUSED_NORM=0: torch's ~8 kernels)
        self._fused_norm = (model.ops.norm is rms_norm
                            and (dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
                            and all(lw.attn_norm_b is None and lw.ffn_norm_b is None for lw in model.dense.layers)
                            and os.environ.get("EDGE_MOE_FUSED_NORM", "1") != "0")
        # h_attn and h quantized by the norm launches that make them (Q8_0 blocks, quant_ops.quantize_x's
        # values): the int8 matvecs reading them next (qkv, the experts' gate+up) skip their own
        # quantizing launch (EDGE_MOE_NORM_QUANT=0: they quantize, A/B runs)
        quant = self._fused_norm and e % 32 == 0 and os.environ.get("EDGE_MOE_NORM_QUANT", "1") != "0"

        def quantized() -> "QuantizedX | None":
            if not quant:
                return None
            return (torch.zeros((1, e), dtype=torch.int8, device=dev), torch.zeros((1, e // 32), device=dev),
                    torch.zeros((1, e // 32), device=dev))

        self.hq_attn, self.hq = quantized(), quantized()
        self.x_mid = torch.zeros((1, e), dtype=dt, device=dev)  # [1, E] the residual before attention
        self.h_attn = torch.zeros((1, e), dtype=dt, device=dev)  # [1, E] attention's normed input
        self.forced = torch.zeros((cfg.n_layer, 1, k), dtype=torch.int64, device=dev)
        self.logits = torch.zeros((1, cfg.n_vocab), dtype=torch.float32, device=dev)
        # host side (pinned on CUDA), written by copies the graphs make or read; the front's
        # results come back in one copy: [ids (as floats, exact) | weights | router logits | h]
        self._cols = np.cumsum([0, k, k, cfg.n_expert, e])
        self.routed_host = host((1, int(self._cols[-1])), torch.float32)
        self.routed = torch.zeros((1, int(self._cols[-1])), dtype=torch.float32, device=dev)  # its device side
        self.pairs_host = host((5, n_pairs), torch.int64)
        self.y_cpu_host = host((1, e), torch.float32)
        self.forced_host = host((cfg.n_layer, 1, k), torch.int64)
        self.step_in_host = host((2,), torch.int64)
        self.pairs_host.fill_(-1)
        # their numpy views, made once (.numpy() costs a few us a call on the host's path)
        self._routed_np, self._pairs_np = self.routed_host.numpy(), self.pairs_host.numpy()
        self._y_cpu_row = self.y_cpu_host.numpy()[0]  # [E]
        # what the last layer's experts left for the next segment to add: y_gpu, y_cpu (in y_cpu_host)
        self._gpu_in = self._cpu_in = False
        self._graphs = GraphCache(dev, capture)

    @property
    def capture(self) -> bool:
        return self._graphs.capture

    @property
    def n_graphs(self) -> int:
        return len(self._graphs)

    # ---- the token ---------------------------------------------------------------------

    def step(self, token: int, forced: np.ndarray | None) -> torch.Tensor:
        """Logits [1, V] of one token after the context (forced: [n_layer, 1, k] expert ids or None)."""
        m = self.m
        pos = m.kv.pos
        length = kv_bucket(pos + 1, m.kv.max_ctx)
        # (the previous token's copy from step_in_host is done: every token syncs after it)
        self.step_in_host[0], self.step_in_host[1] = pos, token
        self.step_in.copy_(self.step_in_host, non_blocking=True)
        if length not in self._masks:
            group = m.cfg.n_head // m.cfg.n_head_kv
            self._masks[length] = torch.zeros((group, length), dtype=torch.bool, device=m.device)
        # one graph instead of ~40 eager launches (rope tables, mask, embedding: 1.5-1.8 ms of host
        # time a token on the H100 box, Qwen3 shape, session 9)
        self._run(("prologue", length), lambda: self._prologue(length))
        if forced is not None:
            self.forced_host.copy_(torch.from_numpy(np.asarray(forced, dtype=np.int64)))
            self.forced.copy_(self.forced_host, non_blocking=True)
        m.gpu.begin_step()
        self._gpu_in = self._cpu_in = False  # layer 0 starts from the embedding
        if self._resident_now():
            self._token_resident(length, forced is not None)
        else:
            self._layers(length, forced is not None)
        adds = (self._gpu_in, self._cpu_in)
        self._run(("head", *adds), lambda: self._head(*adds))
        m.gpu.end_step()
        if m.profiler is not None:
            m.profiler.end_token()
        m.kv.advance(1)
        return self.logits.clone()

    def _layers(self, length: int, forced: bool) -> None:
        """Runs of resident layers as one graph each; the other layers one by one, the host
        deciding hits, misses and fills in between."""
        m = self.m
        cfg, gpu = m.cfg, m.gpu
        runs = not m.on_route  # a watcher of the routing needs every layer on the host
        il = 0
        while il < cfg.n_layer:
            if runs and gpu.layer_resident(il):
                end = il + 1
                while end < cfg.n_layer and gpu.layer_resident(end):
                    end += 1
                self._resident_run(il, end, length, forced)
                il = end
            else:
                self._host_layer(il, length, forced)
                il += 1

    def _resident_run(self, start: int, end: int, length: int, forced: bool) -> None:
        """Layers start..end-1, every expert cached: one graph, no host sync (the next segment
        is queued behind it)."""
        m = self.m
        if m.profiler is not None:
            m.profiler.start_layer()
        t0 = time.perf_counter()
        adds = (self._gpu_in, self._cpu_in)
        self._run(("run", start, end, length, forced, *adds),
                  lambda: self._resident_layers(start, end, length, forced, adds))
        m.timings.attention += time.perf_counter() - t0
        self._gpu_in, self._cpu_in = True, False  # the last layer's hits (and shared expert); no CPU share
        self.runs += 1
        m.gpu.count_resident_hits(range(start, end))
        if m.profiler is not None:  # the run is billed to its first layer's wait_gpu (device synced)
            m.profiler.lap(start, "wait_gpu")

    def _host_layer(self, il: int, length: int, forced: bool) -> None:
        """One layer with the host in the loop: lookups, CPU misses, fills. Lean on purpose: this
        Python runs between the front's sync and the CPU call, ~36 times a Qwen3 token."""
        m = self.m
        gpu, prof, tm = m.gpu, m.profiler, m.timings
        c = self._cols
        routed = self._routed_np
        if prof is not None:
            prof.start_layer()
        t0 = time.perf_counter()
        adds = (self._gpu_in, self._cpu_in)
        self._run(("front", il, length, forced, *adds), lambda: self._front(il, length, forced, adds))
        self._sync()  # ids, weights, h and router logits are on the host now
        id_list = [int(v) for v in routed[0, :c[1]].tolist()]  # [k]
        t1 = time.perf_counter()
        tm.attention += t1 - t0
        if prof is not None:
            prof.lap(il, "attention")  # includes the router: both are in the front graph

        served = gpu.serves(il)
        ids = slots = None
        if served or m.on_route:
            ids = np.array([id_list], dtype=np.int32)  # [1, k]
            slots = gpu.lookup(il, ids) if served else np.full(ids.shape, -1, dtype=np.int64)  # [1, k]
        else:  # no slot can hold this layer's experts: every one is a miss
            gpu.count_unserved(il, len(id_list))
        hit_row = [False] * len(id_list) if slots is None else (slots[0] >= 0).tolist()
        n_hit = sum(hit_row)
        for cb in m.on_route:
            cb(il, routed[:, c[2]:c[3]].copy(), ids.copy(), np.array([hit_row]))
        used = None
        # some misses streamed to the ring now: their copies overlap the CPU's share of the misses
        misses = [j for j, h in enumerate(hit_row) if not h]
        n_stream = gpu.decode_stream_count(il, len(misses)) if misses else 0
        table = slots
        in_place = None  # [3, s] byte offsets of streamed experts read in place (zero copy)
        if n_stream:
            streamed, misses = misses[:n_stream], misses[n_stream:]
            experts = [id_list[j] for j in streamed]
            in_place = gpu.zero_copy_offsets(il, experts)
            table = np.full((1, len(id_list)), -1, dtype=np.int64) if slots is None else slots.copy()
            if in_place is None:  # copied to ring slots, computed as hits of those
                table[0, streamed] = gpu.stream_decode(il, experts)
        # the experts graph runs for hits, streamed misses and the shared expert; a layer with none skips it
        run_experts = n_hit > 0 or n_stream > 0 or m.dense.layers[il].shexp_gate is not None
        if run_experts and gpu.cache is not None:
            if table is None:  # a shared expert beside an unserved layer: a table of misses only
                table = np.full((1, len(id_list)), -1, dtype=np.int64)
            gpu.pair_table(table, self._pairs_np)  # the experts graph copies it to the device
            if in_place is not None:  # their columns are misses of the table: no slot to wait for
                self._pairs_np[:3, streamed] = in_place
            used = gpu.wait_hits(table)
        t2 = time.perf_counter()
        tm.router_sync += t2 - t1
        if prof is not None:
            prof.lap(il, "router_sync", sync=False)
        if run_experts:
            self._run(("experts", il), lambda: self._experts(il, host_pairs=gpu.cache is not None))
        if used is not None:
            gpu.mark_hits_read(used)
        t3 = time.perf_counter()
        tm.gpu_experts_enqueue += t3 - t2
        if prof is not None:
            prof.lap(il, "gpu_enqueue", sync=False)

        n_miss = len(misses)  # the CPU's share
        if n_miss:
            w_list = routed[0, c[1]:c[2]].tolist()  # [k]
            if n_miss < len(id_list):
                id_list, w_list = [id_list[j] for j in misses], [w_list[j] for j in misses]
            # y_cpu_host: the graph after this layer copies it in (every earlier reader of it is
            # done: the front above, which follows any of them on the stream, was synced)
            m.cpu.forward_token(m.cpu_layers[il], routed[0, c[3]:c[4]], id_list, w_list, self._y_cpu_row)
            tm.cpu_calls += 1
        t4 = time.perf_counter()
        tm.cpu_experts += t4 - t3
        m.decode_cpu.add(il, t4 - t3, n_miss)  # every step here is a decode step (T = 1)
        self._gpu_in, self._cpu_in = run_experts, n_miss > 0
        if prof is not None:
            prof.lap(il, "cpu_experts", sync=False)
            prof.lap(il, "wait_gpu")
        if served:
            gpu.after_layer(il, ids, slots)
        if prof is not None:
            prof.lap(il, "fills")

    def _resident_now(self) -> bool:
        """Every expert of the model is cached (so nothing can miss or be evicted) and nobody
        watches the routing per layer: the whole token can be one graph. The first time, the
        device gets the slot table and the stream waits for the fills still in flight."""
        m = self.m
        if m.on_route or not m.gpu.all_resident():
            return False
        self.resident = True
        return True

    def _token_resident(self, length: int, forced: bool) -> None:
        m = self.m
        t0 = time.perf_counter()
        self._run(("token", length, forced), lambda: self._all_layers(length, forced))
        self._gpu_in = True
        self._sync()
        seconds = time.perf_counter() - t0
        m.timings.attention += seconds  # one graph: no phase boundaries left to time
        m.gpu.count_resident_hits(range(m.cfg.n_layer))
        if m.profiler is not None:  # the whole token is billed to layer 0's wait_gpu (see layer_profile)
            m.profiler.seconds[0, m.profiler.phase_index("wait_gpu")] += seconds

    # ---- graphs --------------------------------------------------------------------------

    def _run(self, key: tuple[object, ...], segment: Callable[[], None]) -> None:
        self._graphs.run(key, segment)  # the first time: this token's work, eagerly, then captured

    def _sync(self) -> None:
        if self.m.device.type == "cuda":
            torch.cuda.current_stream(self.m.device).synchronize()
