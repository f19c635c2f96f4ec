"""The hybrid executor: a layer-by-layer forward with experts split between GPU cache and CPU.

Where a miss goes (DESIGN.md): every layer routes on the accelerator, copies the top-k ids
and weights to the host (one small sync per layer), asks the expert cache which of them
are hits, enqueues the hits on the accelerator (cached slots), computes the misses on the
CPU with ggml (`CpuExpertEngine`, one graph for the layer) while the accelerator works,
then adds both. Routing never depends on the cache: the cache only decides where an
expert's FFN runs.

With no GPU it still runs: torch on the CPU for the dense parts, ggml for the experts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_moe.archs import ARCH_OPS
from edge_moe.archs.common import rope_tables
from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine, LayerTensors
from edge_moe.dense_weights import DenseWeights, LayerWeights, load_dense_weights
from edge_moe.expert_weights import ExpertWeights, WeightTensor
from edge_moe.gguf_file import GGUFFile
from edge_moe.gpu_experts import GpuExperts, GpuExpertsConfig
from edge_moe.kv_cache import KVCache
from edge_moe.layer_profile import LayerProfiler
from edge_moe.model_config import MoEConfig, read_config


@dataclass(frozen=True)
class ExecutorConfig:
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": float16 on cuda, float32 on cpu
    n_ctx: int = 2048
    n_threads: int | None = None  # CPU expert threads; None: physical cores
    cache: GpuExpertsConfig | None = None  # None: every expert on the CPU
    profile_layers: bool = False  # per-layer phase times, device synchronized (edge_moe/layer_profile.py)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {self.n_ctx}")
        if self.n_threads is not None and self.n_threads <= 0:
            raise ValueError(f"n_threads must be positive, got {self.n_threads}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


@dataclass
class StepTimings:
    """Seconds spent per phase, summed over layers and calls (a slow result says why)."""

    attention: float = 0.0
    router_sync: float = 0.0
    cpu_experts: float = 0.0
    gpu_experts_enqueue: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class HybridModel:
    def __init__(self, model_path: str | Path, config: ExecutorConfig | None = None) -> None:
        self.config = config or ExecutorConfig()
        self.gguf = GGUFFile(model_path)
        self.cfg: MoEConfig = read_config(self.gguf)
        self.ops = ARCH_OPS[self.cfg.arch]
        self.device = self.config.torch_device()
        self.dtype = self.config.torch_dtype(self.device)
        self.dense: DenseWeights = load_dense_weights(self.gguf, self.cfg, self.device, self.dtype)
        self.kv = KVCache(self.cfg.n_layer, self.config.n_ctx, self.cfg.n_head_kv, self.cfg.head_dim,
                          self.device, self.dtype)
        cpu_cfg = CpuExpertConfig() if self.config.n_threads is None else CpuExpertConfig(n_threads=self.config.n_threads)
        self.cpu = CpuExpertEngine(cpu_cfg)
        self.cpu_layers: list[LayerTensors] = [self.cpu.prepare(self._expert_weights(i))
                                               for i in range(self.cfg.n_layer)]
        self.gpu = GpuExperts(self.gguf, self.cfg, self.device, self.dtype, self.config.cache)
        self.timings = StepTimings()
        # None: no profiling and no extra syncs; attach one to profile the next forwards
        self.profiler = LayerProfiler(self.device, self.cfg.n_layer) if self.config.profile_layers else None
        # callbacks (layer, router logits [T, n_expert] float32 host, ids [T, k], hit mask [T, k]): tracing
        self.on_route: list[Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]] = []

    def _expert_weights(self, layer: int) -> ExpertWeights:
        # routed experts only: the shared expert (qwen2moe) runs on the accelerator
        t = {k: WeightTensor.from_gguf(self.gguf.tensor(f"blk.{layer}.ffn_{k}_exps.weight"))
             for k in ("gate", "up", "down")}
        return ExpertWeights(gate=t["gate"], up=t["up"], down=t["down"])

    # ---- the forward ------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: list[int] | np.ndarray, force_ids: np.ndarray | None = None) -> torch.Tensor:
        """Logits [T, V] (float32) for `tokens` appended after the tokens already in the KV cache.

        `force_ids` [n_layer, T, k] replaces the router's choice of experts (trace replay,
        benchmarks only; the weights still come from the router's probabilities of those ids).
        """
        cfg, ops = self.cfg, self.ops
        host_toks = np.asarray(tokens, dtype=np.int64)  # validated on the host: no device sync
        n = host_toks.shape[0]
        if n == 0:
            raise ValueError("forward needs at least one token")
        if host_toks.min() < 0 or host_toks.max() >= cfg.n_vocab:
            raise ValueError(f"token ids must be in 0..{cfg.n_vocab - 1}")
        toks = torch.as_tensor(host_toks, device=self.device)  # [T]
        self.kv.check_room(n)
        pos = self.kv.pos
        positions = torch.arange(pos, pos + n, device=self.device)
        cos, sin = rope_tables(cfg, positions)  # [T, rope_dim/2]
        x = self.dense.tok_embd[toks]  # [T, E]
        self.gpu.begin_step()
        prof = self.profiler
        for il, lw in enumerate(self.dense.layers):
            if prof is not None:
                prof.start_layer()
            t0 = time.perf_counter()
            x = x + self._attention(il, lw, ops.norm(x, lw.attn_norm, lw.attn_norm_b, cfg.norm_eps), cos, sin, pos)
            h = ops.norm(x, lw.ffn_norm, lw.ffn_norm_b, cfg.norm_eps)  # [T, E]
            self.timings.attention += time.perf_counter() - t0
            if prof is not None:
                prof.lap(il, "attention")
            x = x + self._moe(il, lw, h, None if force_ids is None else force_ids[il])
        self.gpu.end_step()
        if prof is not None:
            prof.end_token()
        self.kv.advance(n)
        x = ops.norm(x, self.dense.output_norm, self.dense.output_norm_b, cfg.norm_eps)
        return F.linear(x, self.dense.output, self.dense.output_b).float()  # [T, V]

    def _attention(self, il: int, lw: LayerWeights, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   pos: int) -> torch.Tensor:
        cfg = self.cfg
        n, d = h.shape[0], cfg.head_dim
        q = F.linear(h, lw.wq, lw.bq).view(n, cfg.n_head, d)  # [T, H, D]
        k = F.linear(h, lw.wk, lw.bk).view(n, cfg.n_head_kv, d)  # [T, KV, D]
        v = F.linear(h, lw.wv, lw.bv).view(n, cfg.n_head_kv, d)
        q, k = self.ops.prepare_qk(q, k, lw, cfg, cos, sin)
        keys, values = self.kv.store(il, k, v)  # [S, KV, D]
        group = cfg.n_head // cfg.n_head_kv  # query head h reads KV head h // group (llama.cpp's broadcast)
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, S, D]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        s = keys.shape[1]
        mask = torch.arange(s, device=h.device)[None, :] <= (pos + torch.arange(n, device=h.device))[:, None]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask)  # [H, T, D]
        return F.linear(out.transpose(0, 1).reshape(n, cfg.n_head * d), lw.wo, lw.bo)  # [T, E]

    def _moe(self, il: int, lw: LayerWeights, h: torch.Tensor, forced: np.ndarray | None) -> torch.Tensor:
        cfg, tm, prof = self.cfg, self.timings, self.profiler
        t0 = time.perf_counter()
        logits = F.linear(h, lw.router)  # [T, n_expert]
        weights, ids = self.ops.route(logits, cfg)  # [T, k]
        if forced is not None:
            ids = torch.as_tensor(forced, device=h.device, dtype=torch.int64)
            probs = torch.softmax(logits.float(), dim=-1).gather(1, ids)
            weights = probs / probs.sum(-1, keepdim=True) if cfg.normalize_topk else probs
        ids_host = ids.to(torch.int32).cpu().numpy()  # the one sync per layer
        w_host = weights.float().cpu().numpy()  # [T, k]; the queue is already drained
        t1 = time.perf_counter()
        tm.router_sync += t1 - t0
        if prof is not None:
            prof.lap(il, "router_sync")

        slots = self.gpu.lookup(il, ids_host)  # [T, k], -1 where the expert is not cached
        hit = slots >= 0
        for cb in self.on_route:
            cb(il, logits.float().cpu().numpy(), ids_host, hit)
        # misses that many tokens use are streamed to the GPU (prefill); the GPU does these and the hits
        streamed = self.gpu.stream_plan(ids_host, hit)  # [T, k]
        on_gpu = hit | streamed
        # The queue is empty here (the router sync just drained it), so copying h to the host
        # costs only the copy; then the hits are enqueued and run while the CPU does the misses.
        h_host = h.float().cpu().numpy() if not on_gpu.all() else None  # [T, E]
        if prof is not None and on_gpu.any():
            prof.gpu_begin()
        y = self.gpu.compute(il, h, weights, slots, ids_host, streamed) if on_gpu.any() else None
        if prof is not None and y is not None:
            prof.gpu_end(il)
        t2 = time.perf_counter()
        tm.gpu_experts_enqueue += t2 - t1
        if prof is not None:
            prof.lap(il, "gpu_enqueue", sync=False)
        if h_host is not None:
            w_host[on_gpu] = 0.0  # the GPU's; a zero weight drops them from the CPU sum
            miss_ids, miss_w = _misses_only(ids_host, w_host, on_gpu)
            y_cpu = torch.from_numpy(self.cpu.forward(self.cpu_layers[il], h_host, miss_ids, miss_w))
            y_cpu = y_cpu.to(device=h.device, dtype=h.dtype, non_blocking=True)
            y = y_cpu if y is None else y + y_cpu
        t3 = time.perf_counter()
        tm.cpu_experts += t3 - t2
        if prof is not None:
            prof.lap(il, "cpu_experts", sync=False)
            prof.lap(il, "wait_gpu")
        self.gpu.after_layer(il, ids_host, slots)
        if prof is not None:
            prof.lap(il, "fills")
        if lw.shexp_gate is not None:
            y = y + self._shared_expert(lw, h)
            if prof is not None:
                prof.lap(il, "shared_expert")
        return y

    @staticmethod
    def _shared_expert(lw: LayerWeights, h: torch.Tensor) -> torch.Tensor:
        out = F.linear(F.silu(F.linear(h, lw.shexp_gate)) * F.linear(h, lw.shexp_up), lw.shexp_down)
        if lw.shexp_gate_inp is not None:
            out = out * torch.sigmoid(h @ lw.shexp_gate_inp)[:, None]
        return out

    # ---- state -----------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        return self.kv.pos

    def reset(self, keep: int = 0) -> None:
        """Forget the context after its first `keep` tokens."""
        self.kv.truncate(keep)

    def close(self) -> None:
        self.cpu.close()
        self.gpu.close()


def _misses_only(ids: np.ndarray, weights: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the hit slots from the CPU's work where every token has the same number of misses
    (always at T = 1); otherwise keep all k slots with zero weights on the hits."""
    n_miss = (~hit).sum(axis=1)
    if n_miss.min() != n_miss.max():
        return ids, weights
    keep = ~hit
    return (np.ascontiguousarray(ids[keep].reshape(ids.shape[0], -1)),
            np.ascontiguousarray(weights[keep].reshape(ids.shape[0], -1)))
