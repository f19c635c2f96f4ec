"""The CPU expert path: the experts a layer routes to, computed by ggml's multithreaded kernels.

One call computes, for hidden states x [T, n_embd] and top-k routing ids / weights [T, k],
`y[t] = sum_j w[t, j] * FFN_{ids[t, j]}(x[t])` (+ the shared expert) as ONE ggml graph:

    gate = mul_mat_id(gate_exps, x, ids)      # [n_ff, k, T]    (ggml order: row length first)
    up   = mul_mat_id(up_exps,   x, ids)      # [n_ff, k, T]
    act  = glu_split(gate, up)                # [n_ff, k, T]    silu(gate) * up
    down = mul_mat_id(down_exps, act, ids)    # [n_embd, k, T]
    y    = out_prod(down, w)                  # [n_embd, 1, T]  sum over the k slots in one node
    (+ down_sh(act(gate_sh x) * up_sh x) * sigmoid(x . gate_inp_sh)   when the layer has a shared expert)

Design:
- Zero-copy: a layer's ggml tensors point into the caller's buffers (the GGUF's mmap); the
  LayerTensors object keeps those buffers alive.
- Graph reuse: a graph is keyed by the layer's *signature* (tensor types, shapes, activation)
  and (T, k), not by the layer: the layers of a model share one graph per T. Before each call
  the matmul nodes' src[0] are pointed at that layer's tensors (3 to 7 pointer writes).
  Intermediates live in one ggml_gallocr buffer per graph; graphs sit in a bounded LRU, so
  10,000 calls allocate nothing new (tests/test_cpu_experts.py checks RSS).
- Threads: one ggml_threadpool per engine and one work buffer grown to the largest plan.
  llama-cpp-python builds ggml with OpenMP, so the worker threads are libgomp's persistent
  team (their idle spinning follows OMP_WAIT_POLICY / GOMP_SPINCOUNT); without OpenMP they
  are ggml's own pool and `poll` sets how long they spin.
- ggml_graph_compute goes through ctypes.CDLL, which releases the GIL for the call.
- Routing inputs are validated before they reach ggml (an out-of-range id would be an
  out-of-bounds read or a GGML_ASSERT abort inside the process).

Zero-copy vs ggml's CPU_REPACK buffers (`repack=True`: weights copied once into the
interleaved layout of ggml's AVX2 / AVX-512 / NEON GEMV/GEMM kernels). Effective GB/s of
expert bytes, Q4_0, T=1, weights streamed from DRAM (benchmarks/cpu_experts_bench.py
--repack-compare; each pair measured side by side in one run, runs differ by ~10%; Mixtral =
4096 x 14336, 8 experts, top-2; Qwen3 = 2048 x 768, 128 experts, top-8; on the GPU machine
ggml was built from llama-cpp-python 0.3.36's vendored sources with GGML_NATIVE, 2026-11-23):

    machine (ggml 0.25.3)                          shape    zero-copy   repack
    GPU machine, 16 Xeon cores, OpenMP build       Mixtral  49.5 / 57.5  59.4 / 58.4   (two runs)
                                                   Qwen3    37.5 / 43.5  43.0 / 49.2
    same, ggml's own threadpool (GGML_OPENMP=OFF)  Mixtral  58.9         66.6
                                                   Qwen3    48.9         52.4
    dev VM, 2 AMD EPYC cores (AVX2)                Qwen3     9.6         13.2

At T=32 (GPU machine, OpenMP): Mixtral 11.1 zero-copy vs 10.6 repack, Qwen3 24.8 vs 31.1.
Repacking is faster at T=1 everywhere (+2% to +38%), yet the default stays zero-copy: the repacked
copy is a second, anonymous copy of every expert byte of the layer (repacking works per 3-D
tensor, not per expert), while the GPU cache's fills still need the GGUF layout from the
mmap, so a model needs ~2x its expert bytes in RAM -- impossible on the laptops this targets.
Turn it on (CpuExpertConfig(repack=True)) where RAM holds both copies; the one-time copy is
single-threaded (1.3 GB/s on the dev VM). On x86 with AVX2, Q4_0, Q4_K, IQ4_NL and MXFP4
tensors with ne1 % 8 == 0 repack (Q2_K too with AVX-512); other tensors stay zero-copy.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import psutil
from gguf.constants import GGMLQuantizationType

from edge_moe.errors import GgmlLibraryError
from edge_moe.expert_weights import ExpertWeights, WeightTensor
from edge_moe.ggml_lib import (
    GGML_TYPE_I32, GgmlCplan, GgmlInitParams, GgmlLibs, GgmlThreadpoolParams, cpu_extra_buffer_types,
    load_ggml, tensor_struct,
)

F32 = int(GGMLQuantizationType.F32)
GRAPH_SIZE = 64  # node slots per graph: the largest (shared expert, gated) uses 13


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


@dataclass(frozen=True)
class CpuExpertConfig:
    n_threads: int = field(default_factory=_physical_cores)
    repack: bool = False  # copy weights into ggml's CPU_REPACK buffers (see the module docstring)
    poll: int = 50  # ggml threadpool polling level 0..100 (ignored by OpenMP builds)
    max_graphs: int = 16  # cached graphs: (layer signature, T, k) combinations kept

    def __post_init__(self) -> None:
        if not 1 <= self.n_threads <= 512:
            raise ValueError(f"n_threads must be in 1..512, got {self.n_threads}")
        if not 0 <= self.poll <= 100:
            raise ValueError(f"poll must be in 0..100, got {self.poll}")
        if self.max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {self.max_graphs}")


_layer_serials = itertools.count(1)
_signature_ids: dict[tuple, int] = {}


class LayerTensors:
    """One layer's weights as ggml tensors: views of the caller's buffers, or repacked copies."""

    def __init__(self, libs: GgmlLibs, weights: ExpertWeights, repack_buft: int | None) -> None:
        self.weights = weights  # ggml points into these buffers: keep them alive as long as we are
        self.serial = next(_layer_serials)
        self.n_embd, self.n_expert = weights.n_embd, weights.n_expert
        roles = weights.tensors()
        b = libs.base
        # room for two tensors per role: a rejected repack attempt leaves one behind
        self._ctx = b.ggml_init(GgmlInitParams(2 * len(roles) * b.ggml_tensor_overhead() + 256, None, True))
        if not self._ctx:
            raise GgmlLibraryError("ggml_init failed for a layer's weight context")
        self._buffers: list[int] = []
        self._finalizer = weakref.finalize(self, _free_layer, libs, self._ctx, self._buffers)
        self.ptrs: dict[str, int] = {}
        repacked: list[str] = []
        for role, w in roles.items():
            ptr = self._repacked(libs, w, repack_buft) if repack_buft else 0
            if ptr:
                repacked.append(role)
            else:
                ptr = _new_tensor(libs, self._ctx, int(w.ggml_type), w.shape)
                tensor_struct(ptr).data = w.data.ctypes.data  # zero-copy
            self.ptrs[role] = ptr
        self.repacked = tuple(repacked)
        # layers with equal signatures share a graph; a small int keeps the per-call key cheap to hash
        signature = (weights.activation, tuple((r, w.ggml_type, w.shape) for r, w in roles.items()), self.repacked)
        self.signature = _signature_ids.setdefault(signature, len(_signature_ids))

    def _repacked(self, libs: GgmlLibs, w: WeightTensor, buft: int) -> int:
        """A tensor in a CPU_REPACK buffer holding the repacked bytes, or 0 where ggml has no repacking."""
        b = libs.base
        ptr = _new_tensor(libs, self._ctx, int(w.ggml_type), w.shape)
        buf = b.ggml_backend_buft_alloc_buffer(buft, w.data.nbytes)
        if not buf:
            raise MemoryError(f"ggml could not allocate {w.data.nbytes} bytes for repacked weights")
        status = b.ggml_backend_tensor_alloc(buf, ptr, b.ggml_backend_buffer_get_base(buf))  # picks the layout
        if status != 0 or not tensor_struct(ptr).extra:  # no interleaved kernel for this type / shape here
            b.ggml_backend_buffer_free(buf)
            return 0
        self._buffers.append(buf)
        b.ggml_backend_tensor_set(ptr, w.data.ctypes.data, 0, w.data.nbytes)  # the one-time repack copy
        return ptr

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the ggml tensors (and repacked copies); the layer cannot be computed afterwards."""
        self._finalizer()


def _free_layer(libs: GgmlLibs, ctx: int, buffers: list[int]) -> None:
    for buf in buffers:
        libs.base.ggml_backend_buffer_free(buf)
    libs.base.ggml_free(ctx)


def _new_tensor(libs: GgmlLibs, ctx: int, ggml_type: int, shape: tuple[int, ...]) -> int:
    b = libs.base
    make = (b.ggml_new_tensor_1d, b.ggml_new_tensor_2d, b.ggml_new_tensor_3d)[len(shape) - 1]
    return make(ctx, ggml_type, *shape)


class _ExpertGraph:
    """A built, allocated and planned graph for one (layer signature, T, k)."""

    def __init__(self, libs: GgmlLibs, layer: LayerTensors, n_tokens: int, k: int,
                 n_threads: int, threadpool: int) -> None:
        b = libs.base
        mem = GRAPH_SIZE * b.ggml_tensor_overhead() + b.ggml_graph_overhead_custom(GRAPH_SIZE, False)
        self._ctx = ctx = b.ggml_init(GgmlInitParams(mem, None, True))
        if not ctx:
            raise GgmlLibraryError("ggml_init failed for an expert graph")
        self._handles = [ctx]  # ggml objects to free: the context, then the allocator
        self._finalizer = weakref.finalize(self, _free_graph, libs, self._handles)
        n_embd, p, act = layer.n_embd, layer.ptrs, layer.weights.activation.value

        x = b.ggml_new_tensor_3d(ctx, F32, n_embd, 1, n_tokens)  # [E, 1, T]
        ids = b.ggml_new_tensor_2d(ctx, GGML_TYPE_I32, k, n_tokens)  # [k, T]
        w = b.ggml_new_tensor_3d(ctx, F32, 1, k, n_tokens)  # [1, k, T]
        for t in (x, ids, w):
            b.ggml_set_input(t)
        gate = b.ggml_mul_mat_id(ctx, p["gate"], x, ids)  # [F, k, T]
        up = b.ggml_mul_mat_id(ctx, p["up"], x, ids)  # [F, k, T]
        down = b.ggml_mul_mat_id(ctx, p["down"], b.ggml_glu_split(ctx, gate, up, act), ids)  # [E, k, T]
        y = b.ggml_out_prod(ctx, down, w)  # [E, 1, T]
        slots = {"gate": gate, "up": up, "down": down}
        if "shexp_gate" in p:
            x2 = b.ggml_reshape_2d(ctx, x, n_embd, n_tokens)  # [E, T]
            sg = b.ggml_mul_mat(ctx, p["shexp_gate"], x2)  # [Fs, T]
            su = b.ggml_mul_mat(ctx, p["shexp_up"], x2)  # [Fs, T]
            sd = b.ggml_mul_mat(ctx, p["shexp_down"], b.ggml_glu_split(ctx, sg, su, act))  # [E, T]
            slots |= {"shexp_gate": sg, "shexp_up": su, "shexp_down": sd}
            if "shexp_gate_inp" in p:
                logit = b.ggml_mul_mat(ctx, p["shexp_gate_inp"], x2)  # [1, T]
                slots["shexp_gate_inp"] = logit
                sd = b.ggml_mul(ctx, sd, b.ggml_sigmoid(ctx, logit))  # [E, T]
            y = b.ggml_add(ctx, b.ggml_reshape_2d(ctx, y, n_embd, n_tokens), sd)  # [E, T]
        b.ggml_set_output(y)
        self._gf = b.ggml_new_graph_custom(ctx, GRAPH_SIZE, False)
        b.ggml_build_forward_expand(self._gf, y)

        galloc = b.ggml_gallocr_new(b.ggml_backend_cpu_buffer_type())
        if galloc:
            self._handles.append(galloc)
        if not galloc or not b.ggml_gallocr_alloc_graph(galloc, self._gf):
            raise MemoryError(f"ggml could not allocate the intermediates of an expert graph (T={n_tokens})")
        self.compute_bytes = b.ggml_gallocr_get_buffer_size(galloc, 0)
        # the matmul nodes whose weight operand (src[0]) is rebound to the layer being computed
        self._slots = [(tensor_struct(node), role) for role, node in slots.items()]
        self.bound_serial = layer.serial
        self.plan: GgmlCplan = libs.cpu.ggml_graph_plan(self._gf, n_threads, threadpool)
        self.plan_ref = ctypes.byref(self.plan)
        self.x = _f32_view(x, (n_tokens, n_embd))
        self.ids = _view(ids, ctypes.c_int32, (n_tokens, k))
        self.w = _f32_view(w, (n_tokens, k))
        self.y = _f32_view(y, (n_tokens, n_embd))

    def bind(self, layer: LayerTensors) -> None:
        """Point the graph's matmuls at `layer`'s weights (same signature as the graph's)."""
        if self.bound_serial != layer.serial:
            for node, role in self._slots:
                node.src[0] = layer.ptrs[role]
            self.bound_serial = layer.serial

    @property
    def cgraph(self) -> int:
        return self._gf

    def close(self) -> None:
        self._finalizer()


def _free_graph(libs: GgmlLibs, handles: list[int]) -> None:
    if len(handles) > 1:
        libs.base.ggml_gallocr_free(handles[1])
    libs.base.ggml_free(handles[0])


def _view(tensor: int, ctype: type, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctype * n).from_address(tensor_struct(tensor).data)).reshape(shape)


def _f32_view(tensor: int, shape: tuple[int, ...]) -> np.ndarray:
    return _view(tensor, ctypes.c_float, shape)


class CpuExpertEngine:
    """Runs layers' routed (and shared) experts on the CPU; one per process is enough.

        engine = CpuExpertEngine(CpuExpertConfig(n_threads=16))
        layer = engine.prepare(expert_weights_from_gguf(gguf, 7))
        y = engine.forward(layer, x, ids, weights)     # [T, n_embd] float32

    Not re-entrant: calls from several threads are serialized by a lock.
    """

    def __init__(self, config: CpuExpertConfig | None = None) -> None:
        self.config = config or CpuExpertConfig()
        self._libs = libs = load_ggml()
        self._repack_buft = cpu_extra_buffer_types().get("CPU_REPACK")  # None where ggml has none
        params = GgmlThreadpoolParams()
        libs.base.ggml_threadpool_params_init(ctypes.byref(params), self.config.n_threads)
        params.poll = self.config.poll
        self._threadpool = libs.cpu.ggml_threadpool_new(ctypes.byref(params))
        if not self._threadpool:
            raise GgmlLibraryError(f"ggml_threadpool_new failed for {self.config.n_threads} threads")
        self._graphs: OrderedDict[tuple, _ExpertGraph] = OrderedDict()
        self._work = _aligned_bytes(0)
        self._work_ptr = self._work.ctypes.data  # (reading .ctypes.data costs ~3 us: cache it)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_engine, libs, self._graphs, self._threadpool)

    def prepare(self, weights: ExpertWeights, repack: bool | None = None) -> LayerTensors:
        """ggml tensors over `weights`: zero-copy, or repacked (`repack`; None: as the config says)."""
        repack = self.config.repack if repack is None else repack
        return LayerTensors(self._libs, weights, self._repack_buft if repack else None)

    def forward(self, layer: LayerTensors, x: np.ndarray, expert_ids: np.ndarray, expert_weights: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
        """sum_j w[t, j] * FFN_{ids[t, j]}(x[t]) (+ shared expert) for x [T, n_embd], ids / w [T, k]."""
        if layer.closed:  # its ggml tensors are freed: computing it would read freed memory
            raise ValueError("this LayerTensors was closed")
        x, ids, w = validate_routing(x, expert_ids, expert_weights, layer.n_embd, layer.n_expert)
        n_tokens, k = ids.shape
        if out is not None and (out.shape != x.shape or out.dtype != np.float32):
            raise ValueError(f"out must be float32 {list(x.shape)}, got {out.dtype} {list(out.shape)}")
        if n_tokens == 0:
            return np.zeros((0, layer.n_embd), np.float32) if out is None else out
        with self._lock:
            graph = self._graph(layer, n_tokens, k)
            graph.bind(layer)
            np.copyto(graph.x, x)  # [T, E]
            np.copyto(graph.ids, ids)  # [T, k]
            np.copyto(graph.w, w)  # [T, k]
            self._compute(graph)
            if out is None:
                return graph.y.copy()
            np.copyto(out, graph.y)
            return out

    def forward_token(self, layer: LayerTensors, x: np.ndarray, expert_ids: list[int], expert_weights: list[float],
                      out: np.ndarray) -> None:
        """`forward` for one token, the decode step's lean path: out [E] = sum_j w[j] * FFN_{ids[j]}(x)
        (+ shared expert) for x [E] float32 and the k experts to compute as Python lists. It makes
        the checks of validate_routing that a routed decode step can fail, in a few Python
        operations: the numpy path cost ~70 us of a host layer's ~0.28 ms outside ggml's compute
        (H100 box, Qwen3 shape, session 10)."""
        if layer.closed:
            raise ValueError("this LayerTensors was closed")
        k = len(expert_ids)
        if not 1 <= k <= layer.n_expert or len(expert_weights) != k:
            raise ValueError(f"need 1..{layer.n_expert} expert ids and as many weights, got {k} and "
                             f"{len(expert_weights)}")
        lo, hi = min(expert_ids), max(expert_ids)
        if lo < 0 or hi >= layer.n_expert:
            raise ValueError(f"expert id {lo if lo < 0 else hi} out of range: this layer has experts "
                             f"0..{layer.n_expert - 1}")
        if not math.isfinite(sum(expert_weights)):
            raise ValueError("expert weights contain NaN or infinity")
        if x.shape != (layer.n_embd,) or out.shape != (layer.n_embd,) or out.dtype != np.float32:
            raise ValueError(f"x and out must be [{layer.n_embd}] (out float32), got {list(x.shape)}, "
                             f"{out.dtype} {list(out.shape)}")
        with self._lock:
            graph = self._graph(layer, 1, k)
            graph.bind(layer)
            graph.x[0] = x  # [E]
            graph.ids[0] = expert_ids  # [k]
            graph.w[0] = expert_weights  # [k]
            self._compute(graph)
            out[:] = graph.y[0]

    def _compute(self, graph: _ExpertGraph) -> None:
        graph.plan.work_data = self._work_ptr
        status = self._libs.cpu.ggml_graph_compute(graph.cgraph, graph.plan_ref)  # GIL released
        if status != 0:
            raise GgmlLibraryError(f"ggml_graph_compute failed with status {status}")

    def _graph(self, layer: LayerTensors, n_tokens: int, k: int) -> _ExpertGraph:
        key = (layer.signature, n_tokens, k)
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph
        while len(self._graphs) >= self.config.max_graphs:
            self._graphs.popitem(last=False)[1].close()
        graph = _ExpertGraph(self._libs, layer, n_tokens, k, self.config.n_threads, self._threadpool)
        if graph.plan.work_size > self._work.nbytes:
            self._work = _aligned_bytes(graph.plan.work_size)
            self._work_ptr = self._work.ctypes.data
        self._graphs[key] = graph
        return graph

    def cached_graph_bytes(self) -> int:
        """Intermediate buffers held by cached graphs plus the shared work buffer."""
        return sum(g.compute_bytes for g in self._graphs.values()) + self._work.nbytes

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> CpuExpertEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_engine(libs: GgmlLibs, graphs: OrderedDict, threadpool: int) -> None:
    for graph in graphs.values():
        graph.close()
    graphs.clear()
    libs.cpu.ggml_threadpool_free(threadpool)


def _aligned_bytes(n: int, alignment: int = 64) -> np.ndarray:
    raw = np.empty(n + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + n]


_FEW = 64


def validate_routing(x: np.ndarray, expert_ids: np.ndarray, expert_weights: np.ndarray, n_embd: int,
                     n_expert: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the routing inputs so that nothing out of range ever reaches ggml.

    Cheap enough for every decode step (a few us): dtype kinds instead of issubdtype, Python
    min / max / sum on the few elements of a decode step, numpy reductions on a prefill's.
    """
    x, ids, w = np.asarray(x), np.asarray(expert_ids), np.asarray(expert_weights)
    if x.ndim != 2 or x.shape[1] != n_embd or x.dtype.kind != "f":
        raise ValueError(f"hidden states must be float [T, {n_embd}], got {x.dtype} {list(x.shape)}")
    n_tokens = x.shape[0]
    if ids.ndim != 2 or ids.shape[0] != n_tokens or not 1 <= ids.shape[1] <= n_expert:
        raise ValueError(f"expert ids must be [T={n_tokens}, k] with 1 <= k <= {n_expert}, got {list(ids.shape)}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"expert ids must be integers (int32), got {ids.dtype}")
    if w.shape != ids.shape or w.dtype.kind != "f":
        raise ValueError(f"expert weights must be float {list(ids.shape)} like the ids, got {w.dtype} {list(w.shape)}")
    if ids.size <= _FEW:  # decode: Python on a handful of elements beats numpy's per-call overhead
        id_list = ids.ravel().tolist()
        lo, hi = min(id_list, default=0), max(id_list, default=0)
        finite = math.isfinite(sum(w.ravel().tolist()))
    else:
        lo, hi = int(ids.min()), int(ids.max())
        finite = math.isfinite(float(w.sum(dtype=np.float64)))  # NaN and +-inf survive a sum
    if lo < 0 or hi >= n_expert:
        raise ValueError(f"expert id {lo if lo < 0 else hi} out of range: this layer has experts 0..{n_expert - 1}")
    if not finite:
        raise ValueError("expert weights contain NaN or infinity")
    return x, ids, w


def forward_misses(engine: CpuExpertEngine, layer: LayerTensors, x: np.ndarray, ids: np.ndarray,
                   weights: np.ndarray, on_gpu: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The CPU's share of a layer's routed experts: y [T, E] = sum over the (t, j) not `on_gpu`
    of weights[t, j] * FFN_{ids[t, j]}(x[t]); x [T, E], ids / weights / on_gpu [T, k].

    ggml's mul_mat_id computes every (token, slot) pair it is given, so the GPU's pairs are
    dropped, not zero-weighted: tokens are grouped by how many misses they have and each group
    is one call with exactly that many slots (one call at T = 1). Zero-weighting them made a
    512-token Qwen3 prefill compute all 8 experts of every token on the CPU in every layer."""
    miss = ~on_gpu
    n_miss = miss.sum(axis=1)  # [T]
    if out is None:
        out = np.zeros((x.shape[0], x.shape[1]), np.float32)
    lo, hi = int(n_miss.min()), int(n_miss.max())
    if lo == hi:
        if hi == 0:
            out[:] = 0.0
            return out
        return engine.forward(layer, x, np.ascontiguousarray(ids[miss].reshape(-1, hi)),
                              np.ascontiguousarray(weights[miss].reshape(-1, hi), dtype=np.float32), out=out)
    out[:] = 0.0
    for m in range(max(lo, 1), hi + 1):
        rows = np.flatnonzero(n_miss == m)
        if rows.size == 0:
            continue
        sub = miss[rows]
        out[rows] = engine.forward(layer, np.ascontiguousarray(x[rows]), ids[rows][sub].reshape(-1, m),
                                   np.ascontiguousarray(weights[rows][sub].reshape(-1, m), dtype=np.float32))
    return out
