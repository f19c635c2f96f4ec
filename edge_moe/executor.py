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

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from edge_moe.archs import ARCH_OPS
from edge_moe.archs.common import RopeTables, rope_tables
from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine, LayerTensors, forward_misses
from edge_moe.decode_graphs import DecodeGraphs
from edge_moe.dense_linear import embedding, linear
from edge_moe.dense_weights import DENSE_FORMATS, DenseWeights, LayerWeights, choose_dense_format, load_dense_weights
from edge_moe.expert_weights import ExpertWeights, WeightTensor
from edge_moe.gguf_file import GGUFFile
from edge_moe.gpu_experts import GpuExperts, GpuExpertsConfig
from edge_moe.kv_cache import KVCache
from edge_moe.layer_profile import LayerProfiler
from edge_moe.model_config import MoEConfig, read_config
from edge_moe.prefill_graphs import PrefillGraphs
from edge_moe.step_stats import DecodeCpuWork, StepTimings

if TYPE_CHECKING:
    from edge_moe.quant_ops import QuantizedX


# RAM left available beside the repacked copies of the CPU layers' experts (else no repacking)
REPACK_RAM_HEADROOM = 4 << 30


@dataclass(frozen=True)
class ExecutorConfig:
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": float16 on cuda, float32 on cpu
    n_ctx: int = 2048
    n_threads: int | None = None  # CPU expert threads; None: physical cores
    cache: GpuExpertsConfig | None = None  # None: every expert on the CPU
    profile_layers: bool = False  # per-layer phase times, device synchronized (edge_moe/layer_profile.py)
    # one-token decode steps as CUDA graphs (edge_moe/decode_graphs.py): "auto" (on CUDA when
    # the experts run the Triton kernels), "on", "off", or "uncaptured" (the same loop run
    # eagerly on the graphs' buffers: how tests exercise it without a GPU)
    decode_graphs: str = "auto"
    # prompt chunks of an all-GPU model as CUDA graphs (edge_moe/prefill_graphs.py), same modes;
    # "auto" also reads EDGE_MOE_PREFILL_GRAPHS=0 (off: A/B runs)
    prefill_graphs: str = "auto"
    # non-expert weights (edge_moe/dense_weights.py): "fp16" (dequantized at load to the compute
    # dtype), "quantized" (big matrices in their GGUF block formats, Triton kernels), or "auto"
    # (quantized on CUDA when the kernels read every type, else fp16)
    dense_format: str = "auto"
    # a longer prompt is evaluated in steps of this many tokens (as llama.cpp's ubatch): the
    # attention scores and MoE intermediates of one step bound the prefill's VRAM
    prefill_chunk: int = 512
    # CPU expert weights of the layers no GPU slot serves: "auto" repacks them into ggml's
    # interleaved layout when RAM holds the copy (`HybridModel._prepare_cpu_layers`), "off" never
    cpu_repack: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {self.n_ctx}")
        if self.n_threads is not None and self.n_threads <= 0:
            raise ValueError(f"n_threads must be positive, got {self.n_threads}")
        for name in ("decode_graphs", "prefill_graphs"):
            if getattr(self, name) not in ("auto", "on", "off", "uncaptured"):
                raise ValueError(f"{name} must be auto, on, off or uncaptured, got {getattr(self, name)!r}")
        if self.dense_format not in DENSE_FORMATS:
            raise ValueError(f"dense_format must be auto, fp16 or quantized, got {self.dense_format!r}")
        if self.prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be positive, got {self.prefill_chunk}")
        if self.cpu_repack not in ("auto", "off"):
            raise ValueError(f"cpu_repack must be auto or off, got {self.cpu_repack!r}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


class HybridModel:
    def __init__(self, model_path: str | Path, config: ExecutorConfig | None = None) -> None:
        self.config = config or ExecutorConfig()
        self.gguf = GGUFFile(model_path)
        self.cfg: MoEConfig = read_config(self.gguf)
        self.ops = ARCH_OPS[self.cfg.arch]
        self.device = self.config.torch_device()
        self.dtype = self.config.torch_dtype(self.device)
        fmt = choose_dense_format(self.config.dense_format, self.device.type, self.gguf, self.cfg)
        self.dense: DenseWeights = load_dense_weights(self.gguf, self.cfg, self.device, self.dtype, fmt)
        self.kv = KVCache(self.cfg.n_layer, self.config.n_ctx, self.cfg.n_head_kv, self.cfg.head_dim,
                          self.device, self.dtype)
        cpu_cfg = CpuExpertConfig() if self.config.n_threads is None else CpuExpertConfig(n_threads=self.config.n_threads)
        self.cpu = CpuExpertEngine(cpu_cfg)
        self.gpu = GpuExperts(self.gguf, self.cfg, self.device, self.dtype, self.config.cache)
        self.repacked_layers: list[int] = []  # layers whose CPU experts are in ggml's repacked layout
        self.cpu_layers: list[LayerTensors] = self._prepare_cpu_layers()
        self.timings = StepTimings()
        self.decode_cpu = DecodeCpuWork(misses=[0] * self.cfg.n_layer)  # since load, never reset
        # None: no profiling and no extra syncs; attach one to profile the next forwards
        self.profiler = LayerProfiler(self.device, self.cfg.n_layer) if self.config.profile_layers else None
        # callbacks (layer, router logits [T, n_expert] float32 host, ids [T, k], hit mask [T, k]): tracing
        self.on_route: list[Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]] = []
        self.decode_graphs = self._decode_graphs(self.config.decode_graphs)
        self.prefill_graphs = self._prefill_graphs(self.config.prefill_graphs)
        # q/k norm + rope + KV store in one Triton launch on CUDA (EDGE_MOE_FUSED_QK=0: torch ops)
        self._fused_qk = (self.device.type == "cuda" and self.ops.fused_qk != ""
                          and os.environ.get("EDGE_MOE_FUSED_QK", "1") != "0")
        self._decode_attn = ((self.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")  # T = 1
                             and os.environ.get("EDGE_MOE_DECODE_ATTN", "1") != "0")  # decode_attn.py; 0: SDPA

    def _decode_graphs(self, mode: str) -> DecodeGraphs | None:
        if mode == "auto":
            usable = self.device.type == "cuda" and (self.gpu.cache is None or self.gpu.use_triton)
            mode = "on" if usable else "off"
        return None if mode == "off" else DecodeGraphs(self, capture=mode == "on")

    def _prefill_graphs(self, mode: str) -> PrefillGraphs | None:
        if mode == "auto":
            usable = (self.device.type == "cuda" and self.gpu.cache is not None and self.gpu.use_triton
                      and os.environ.get("EDGE_MOE_PREFILL_GRAPHS", "1") != "0")
            mode = "on" if usable else "off"
        return None if mode == "off" else PrefillGraphs(self, capture=mode == "on")

    def _prepare_cpu_layers(self) -> list[LayerTensors]:
        """ggml tensors of every layer's experts. The layers no GPU slot serves (the CPU computes
        all their experts; nothing copies them from the file to the GPU) are repacked into ggml's
        interleaved layout, as llama.cpp does with CPU weights: +2% to +38% at T = 1
        (cpu_experts.py), for an anonymous copy of their bytes, made only while available RAM
        keeps REPACK_RAM_HEADROOM beside it. The one-time copies run on a few threads."""
        weights = [self._expert_weights(i) for i in range(self.cfg.n_layer)]
        chosen = [i for i in range(self.cfg.n_layer) if not self.gpu.serves(i)]
        need = sum(w.data.nbytes for i in chosen for w in weights[i].tensors().values())
        if self.config.cpu_repack == "off" or not chosen or psutil.virtual_memory().available < need + REPACK_RAM_HEADROOM:
            chosen = []
        self.repacked_layers = chosen
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # ctypes releases the GIL
            return list(pool.map(lambda i: self.cpu.prepare(weights[i], repack=i in chosen), range(len(weights))))

    def _expert_weights(self, layer: int) -> ExpertWeights:
        # routed experts only: the shared expert (qwen2moe) runs on the accelerator
        t = {k: WeightTensor.from_gguf(self.gguf.tensor(f"blk.{layer}.ffn_{k}_exps.weight"))
             for k in ("gate", "up", "down")}
        return ExpertWeights(gate=t["gate"], up=t["up"], down=t["down"])

    # ---- the forward ------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: list[int] | np.ndarray, force_ids: np.ndarray | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits [T, V] (float32) for `tokens` appended after the tokens already in the KV cache,
        or [1, V] of the last token with `last_only` (what generation needs: no [T, V] buffer).

        A prompt longer than `config.prefill_chunk` runs in steps of that many tokens.
        `force_ids` [n_layer, T, k] replaces the router's choice of experts (trace replay,
        benchmarks only; the weights still come from the router's probabilities of those ids).
        """
        cfg = self.cfg
        host_toks = np.asarray(tokens, dtype=np.int64)  # validated on the host: no device sync
        n = host_toks.shape[0]
        if n == 0:
            raise ValueError("forward needs at least one token")
        if host_toks.min() < 0 or host_toks.max() >= cfg.n_vocab:
            raise ValueError(f"token ids must be in 0..{cfg.n_vocab - 1}")
        self.kv.check_room(n)
        if n == 1 and self.decode_graphs is not None:
            return self.decode_graphs.step(int(host_toks[0]), force_ids)
        step = self.config.prefill_chunk
        logits = []
        graphs = self.prefill_graphs
        for a in range(0, n, step):
            last = a + step >= n
            chunk = host_toks[a:a + step]
            forced = None if force_ids is None else force_ids[:, a:a + step]
            if graphs is not None and graphs.takes(chunk.shape[0]):  # all-GPU: the chunk as one graph
                x = graphs.run(chunk, forced)
            else:
                x = self._forward_tokens(chunk, forced, decode=n == 1)
            if last or not last_only:
                logits.append(self.head(x[-1:] if last_only else x))
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def _forward_tokens(self, host_toks: np.ndarray, force_ids: np.ndarray | None, decode: bool = False,
                        ) -> torch.Tensor:
        """Every layer over tokens [T] after the KV cache's; the residual stream [T, E] after them.
        decode: a one-token forward (not a prompt's last chunk of one token): counted in decode_cpu."""
        n = host_toks.shape[0]
        toks = torch.as_tensor(host_toks, device=self.device)  # [T]
        pos = self.kv.pos
        positions = torch.arange(pos, pos + n, device=self.device)  # [T]
        x, rope, mask = self.chunk_inputs(toks, positions, pos + n)
        self.gpu.begin_step()
        prof = self.profiler
        for il, lw in enumerate(self.dense.layers):
            if prof is not None:
                prof.start_layer()
            t0 = time.perf_counter()
            x, h = self.front(il, x, rope, positions, mask)
            self.timings.attention += time.perf_counter() - t0
            if prof is not None:
                prof.lap(il, "attention")
            x = x + self._moe(il, lw, h, None if force_ids is None else force_ids[il], decode)
        self.gpu.end_step()
        if prof is not None:
            prof.end_token()
        self.kv.advance(n)
        return x

    # ---- pieces shared with the decode and prefill graphs (decode_graphs.py, prefill_graphs.py) ----

    def chunk_inputs(self, toks: torch.Tensor, positions: torch.Tensor, length: int,
                     ) -> tuple[torch.Tensor, RopeTables, torch.Tensor]:
        """A chunk's embeddings [T, E], rope tables and attention mask [group * T, length] from
        its token ids and positions [T] (device tensors)."""
        rope = rope_tables(self.cfg, self.ops.rope, positions, self.dtype)
        return self.embed(toks), rope, self.attention_mask(positions, length)

    def front(self, il: int, x: torch.Tensor, rope: RopeTables, positions: torch.Tensor, mask: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer il up to its MoE: x + attention(norm(x)) and the FFN norm of that -> ([T, E], [T, E]).
        mask [group * T, S] (`attention_mask`): S KV positions attended, S >= the context."""
        lw, cfg, ops = self.dense.layers[il], self.cfg, self.ops
        x = x + self._attention(il, lw, ops.norm(x, lw.attn_norm, lw.attn_norm_b, cfg.norm_eps), rope, positions,
                                mask)
        return x, ops.norm(x, lw.ffn_norm, lw.ffn_norm_b, cfg.norm_eps)

    def attention(self, il: int, h: torch.Tensor, rope: RopeTables, positions: torch.Tensor,
                  mask: torch.Tensor, hq: "QuantizedX | None" = None) -> torch.Tensor:
        """Layer il's attention output [T, E] for its normed input h [T, E] (`front` without the
        norms and the residual, for callers that fuse those: decode_graphs)."""
        return self._attention(il, self.dense.layers[il], h, rope, positions, mask, hq)

    def embed(self, toks: torch.Tensor | int) -> torch.Tensor:
        """Token embeddings: ids [T] (device) -> [T, E], or one host id -> [1, E]."""
        return embedding(self.dense.tok_embd, toks, self.dtype)

    def attention_mask(self, positions: torch.Tensor, length: int) -> torch.Tensor:
        """[group * T, length] bool: query row g * T + t sees the keys at positions <= positions[t]."""
        group = self.cfg.n_head // self.cfg.n_head_kv
        mask = torch.arange(length, device=positions.device)[None, :] <= positions[:, None]  # [T, S]
        return mask.repeat(group, 1)

    def route(self, il: int, h: torch.Tensor, forced: torch.Tensor | None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits [T, n_expert], weights [T, k] and ids [T, k] (int64) of layer il;
        `forced` [T, k] (device) replaces the ids, the weights then come from their probabilities."""
        logits = F.linear(h, self.dense.layers[il].router)  # [T, n_expert] (the router stays exact: fp)
        weights, ids = self.ops.route(logits, self.cfg)
        if forced is not None:
            ids = forced
            probs = torch.softmax(logits.float(), dim=-1).gather(1, ids)
            weights = probs / probs.sum(-1, keepdim=True) if self.cfg.normalize_topk else probs
        return logits, weights, ids

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Output norm and LM head: x [T, E] -> logits [T, V] float32."""
        x = self.ops.norm(x, self.dense.output_norm, self.dense.output_norm_b, self.cfg.norm_eps)
        return linear(x, self.dense.output, self.dense.output_b).float()

    def _attention(self, il: int, lw: LayerWeights, h: torch.Tensor, rope: RopeTables, positions: torch.Tensor,
                   mask: torch.Tensor, hq: "QuantizedX | None" = None) -> torch.Tensor:
        cfg = self.cfg
        n, d, kv = h.shape[0], cfg.head_dim, cfg.n_head_kv
        group = cfg.n_head // kv  # query head h reads KV head h // group (llama.cpp's broadcast)
        qkv = linear(h, lw.wqkv, lw.bqkv, xq=hq)  # [T, (H + 2 KV) * D]
        if self._fused_qk:
            from edge_moe.attn_kernels import qk_prepare

            norm = self.ops.fused_qk == "head_norm"
            q = qk_prepare(qkv, cfg.n_head, kv, d, positions, rope, lw.q_norm if norm else None,
                           lw.k_norm if norm else None, cfg.norm_eps, self.kv.k[il], self.kv.v[il])  # [T, H, D]
            keys, values = self.kv.keys_values(il, mask.shape[1])  # [S, KV, D]
        else:
            q, k, v = qkv.split([cfg.n_head * d, kv * d, kv * d], dim=-1)
            q, k = self.ops.prepare_qk(q.view(n, cfg.n_head, d), k.view(n, kv, d), lw, cfg, rope)  # [T, H|KV, D]
            keys, values = self.kv.store(il, positions, k, v.view(n, kv, d), mask.shape[1])  # [S, KV, D]
        if n == 1 and self._decode_attn:  # every caller's T = 1 mask is attention_mask's: keys 0..positions[0]
            from edge_moe.decode_attn import decode_attention

            return linear(decode_attention(q, keys, values, positions), lw.wo, lw.bo)  # [1, H * D] -> [1, E]
        # The query heads of one KV head become rows of one attention problem (no repeated K/V):
        # q [T, H, D] -> [KV, group * T, D], row g * T + t
        qg = q.reshape(n, kv, group, d).permute(1, 2, 0, 3).reshape(1, kv, group * n, d)
        # 4-D (batch 1) inputs: with 3-D ones CUDA falls back to the unfused math path
        out = F.scaled_dot_product_attention(qg, keys.transpose(0, 1)[None], values.transpose(0, 1)[None],
                                             attn_mask=mask[None, None])  # [1, KV, group * T, D]
        out = out.view(kv, group, n, d).permute(2, 0, 1, 3).reshape(n, cfg.n_head * d)  # [T, H * D]
        return linear(out, lw.wo, lw.bo)  # [T, E]

    def _moe(self, il: int, lw: LayerWeights, h: torch.Tensor, forced: np.ndarray | None,
             decode: bool = False) -> torch.Tensor:
        tm, prof = self.timings, self.profiler
        t0 = time.perf_counter()
        forced_dev = None if forced is None else torch.as_tensor(forced, device=h.device, dtype=torch.int64)
        logits, weights, ids = self.route(il, h, forced_dev)  # [T, n_expert], [T, k], [T, k]
        if not self.on_route and self.gpu.resident_on_device(il, h.shape[0]):  # no host sync: no lookup
            y = self.resident_moe(il, lw, h, weights, ids)
            self.gpu.count_resident_hits(range(il, il + 1), ids.numel())
            tm.gpu_experts_enqueue += time.perf_counter() - t0
            if prof is not None:
                prof.lap(il, "gpu_enqueue", sync=False)
            return y
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
            y_cpu = torch.from_numpy(forward_misses(self.cpu, self.cpu_layers[il], h_host, ids_host, w_host, on_gpu))
            tm.cpu_calls += 1
            y_cpu = y_cpu.to(device=h.device, dtype=h.dtype, non_blocking=True)
            y = y_cpu if y is None else y + y_cpu
        t3 = time.perf_counter()
        tm.cpu_experts += t3 - t2
        if decode:
            self.decode_cpu.add(il, t3 - t2, 0 if h_host is None else on_gpu.size - int(np.count_nonzero(on_gpu)))
        if prof is not None:
            prof.lap(il, "cpu_experts", sync=False)
            prof.lap(il, "wait_gpu")
        self.gpu.after_layer(il, ids_host, slots)
        if prof is not None:
            prof.lap(il, "fills")
        if lw.shexp_gate is not None:
            y = y + self.shared_expert(lw, h)
            if prof is not None:
                prof.lap(il, "shared_expert")
        return y

    def resident_moe(self, il: int, lw: LayerWeights, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                     ) -> torch.Tensor:
        """The MoE output [T, E] of a layer `gpu.resident_on_device` takes, from its routing
        (weights, ids [T, k], device): tiles, expert kernels and shared expert all enqueued on
        the device, nothing read back (hits not counted: the caller does)."""
        y = self.gpu.compute_resident(il, h, weights, ids)
        return y if lw.shexp_gate is None else y + self.shared_expert(lw, h)

    @staticmethod
    def shared_expert(lw: LayerWeights, h: torch.Tensor) -> torch.Tensor:
        out = linear(F.silu(linear(h, lw.shexp_gate)) * linear(h, lw.shexp_up), lw.shexp_down)  # [T, E]
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
        # the graphs now, not whenever the cyclic GC finds them (they point back at the model): a
        # CUDA graph destroyed while another model captures one invalidates that capture
        self.decode_graphs = self.prefill_graphs = None
        self.cpu.close()
        self.gpu.close()

