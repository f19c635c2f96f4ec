"""A prompt chunk through an all-GPU model as one CUDA graph.

When every expert of the model is cached, an eager prompt chunk never waits for the device
(routing and tiles are built there: hit_compute.compute_resident), but it is host-bound: a
512-token Qwen3-30B-A3B chunk is ~2,600 kernel launches, ~65-110 ms of host time against
~34 ms of GPU work (H100 box, sessions 12-13), so llama.cpp's prefill was 1.1-2x ours. Here
the whole chunk (embedding, rope tables, mask, every layer's attention, router, tile table,
grouped expert kernels, shared expert, residual) is one graph, replayed for any chunk of the
same shape: the host pays one launch.

Shapes are bucketed so that graphs recur:
    tokens  a chunk of n tokens runs as B rows: the next power of two from MIN_TOKENS up to 64,
            then the next multiple of 64 (at most prefill_chunk). Rows n..B-1 are token 0 at the
            positions after the chunk: every real row's causal mask hides them, and their KV
            writes land past the context, where the next tokens overwrite them before anything
            attends there. Their experts cost GPU time, not correctness.
    KV      the attended length is decode_graphs.kv_bucket(n_past + B): a power of two, masked.
A chunk whose rows would not fit the KV cache (n_past + B > n_ctx) runs eagerly.

The first chunk of a shape runs eagerly on the graph's buffers (Triton compiles, cuBLAS and
cuDNN choose kernels; its results are the chunk's), then the shape is captured; later chunks
of that shape replay it (edge_moe/graph_cache.py). So a prompt of a new shape costs about one
more host pass (the capture) than the eager path; measured figures are in the README's results.

`capture=False` runs the same code eagerly on the same buffers: how the tests exercise the
padding and bucketing on the CPU against llama.cpp.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from edge_moe.decode_graphs import kv_bucket
from edge_moe.graph_cache import GraphCache

if TYPE_CHECKING:
    from edge_moe.executor import HybridModel

MIN_TOKENS = 16  # smallest token bucket: the grouped kernels' threshold (hit_compute.GROUPED_MIN_TOKENS)


def token_bucket(n: int, chunk: int) -> int:
    """Rows a chunk of n tokens runs as: a power of two >= n up to 64, then a multiple of 64;
    never more than `chunk` (the largest chunk: it is its own bucket)."""
    b = max(MIN_TOKENS, 1 << (n - 1).bit_length()) if n <= 64 else -(-n // 64) * 64
    return min(b, chunk)


class PrefillGraphs:
    def __init__(self, model: "HybridModel", capture: bool) -> None:
        self.m = model
        dev, chunk = model.device, model.config.prefill_chunk
        self.chunk = chunk
        # token ids and positions of a chunk, padded: one copy from pinned memory per chunk
        pin = dev.type == "cuda"
        self.inputs_host = torch.zeros((2, chunk), dtype=torch.int64, pin_memory=pin)
        self.inputs = torch.zeros((2, chunk), dtype=torch.int64, device=dev)  # [token; position] x B
        # expert ids forced from a trace (benchmark replay), [n_layer, B, k]; padded rows: expert 0
        cfg = model.cfg
        self.forced_host = torch.zeros((cfg.n_layer, chunk, cfg.n_expert_used), dtype=torch.int64, pin_memory=pin)
        self.forced = torch.zeros((cfg.n_layer, chunk, cfg.n_expert_used), dtype=torch.int64, device=dev)
        self.out = torch.zeros((chunk, model.cfg.n_embd), dtype=model.dtype, device=dev)  # [B, E] residual
        self._graphs = GraphCache(dev, capture)  # by (B, KV length, forced)
        self._copied = torch.cuda.Event() if dev.type == "cuda" else None  # inputs_host read by the device
        self.chunks = 0  # chunks run through this path (replayed, captured or not)

    @property
    def n_graphs(self) -> int:
        return len(self._graphs)

    def takes(self, n: int) -> bool:
        """Whether a chunk of n > 1 tokens after the context runs here: every expert cached, no
        routing watcher, the padded rows inside the KV cache, and every layer's experts through
        the grouped kernels at that many rows."""
        m = self.m
        if n < 2 or n > self.chunk or m.on_route or not m.gpu.all_resident():
            return False
        b = token_bucket(n, self.chunk)
        return (m.kv.pos + b <= m.kv.max_ctx
                and all(m.gpu.resident_on_device(il, b) for il in range(m.cfg.n_layer)))

    def run(self, host_toks: "list[int] | np.ndarray", forced: np.ndarray | None = None) -> torch.Tensor:
        """The residual stream [n, E] after every layer for tokens [n] after the context (the
        caller checked `takes`; a view of a buffer the next chunk rewrites); the KV cache
        advanced by n. forced: [n_layer, n, k] expert ids replacing the router's (as
        HybridModel.forward's force_ids)."""
        m = self.m
        toks = torch.as_tensor(host_toks, dtype=torch.int64)
        n, pos = toks.shape[0], m.kv.pos
        b = token_bucket(n, self.chunk)
        length = kv_bucket(pos + b, m.kv.max_ctx)
        prof = m.profiler
        if prof is not None:
            prof.start_layer()
        t0 = time.perf_counter()
        if self._copied is not None:  # the previous chunk's copy has read inputs_host (a prompt's
            self._copied.synchronize()  # chunks are enqueued back to back)
        self.inputs_host[0, :n] = toks
        self.inputs_host[0, n:b] = 0
        torch.arange(pos, pos + b, out=self.inputs_host[1, :b])
        self.inputs[:, :b].copy_(self.inputs_host[:, :b], non_blocking=True)
        if forced is not None:
            self.forced_host[:, :n] = torch.from_numpy(np.asarray(forced, dtype=np.int64))
            self.forced_host[:, n:b] = 0
            self.forced[:, :b].copy_(self.forced_host[:, :b], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        m.gpu.begin_step()
        key = (b, length, forced is not None)
        self._graphs.run(key, lambda: self._chunk(*key))
        m.gpu.end_step()
        m.gpu.count_resident_hits(range(m.cfg.n_layer), n * m.cfg.n_expert_used)
        m.timings.attention += time.perf_counter() - t0  # one graph: no phase boundaries left to time
        if prof is not None:  # the chunk is billed to layer 0's wait_gpu (as decode_graphs' resident token)
            prof.lap(0, "wait_gpu")
            prof.end_token()
        m.kv.advance(n)
        self.chunks += 1
        return self.out[:n]

    def _chunk(self, b: int, length: int, forced: bool) -> None:
        """The graph's body: B rows from `inputs` (and `forced`) through every layer into `out`."""
        m = self.m
        toks, positions = self.inputs[0, :b], self.inputs[1, :b]  # [B], [B]
        x, rope, mask = m.chunk_inputs(toks, positions, length)
        for il, lw in enumerate(m.dense.layers):
            x, h = m.front(il, x, rope, positions, mask)
            _, weights, ids = m.route(il, h, self.forced[il, :b] if forced else None)  # [B, k] each
            x = x + m.resident_moe(il, lw, h, weights, ids)
        self.out[:b].copy_(x)
