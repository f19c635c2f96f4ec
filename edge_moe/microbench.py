"""Micro-benchmarks of this machine's bandwidths, cached per machine (a few seconds, once).

The planner's cost model (DESIGN.md, "The cost model"; edge_moe/cost_model.py) needs these
figures measured here, never assumed:

- ggml's fixed cost per call of the CPU expert path (`cpu_call_us`): T=1 calls on tiny Q4_0
  experts that stay in L2, with 1 and with 4 experts, extrapolated to 0 experts (median per
  call). It is what a decode layer with misses pays beyond the bytes (thread wake-up and
  barriers, graph setup); the H100 box's 16 threads measured ~0.025 ms with the workers
  spinning between calls, ~0.3 ms more when they sleep (OMP passive).
- DRAM read through the CPU expert path: ggml's mul_mat_id graph (CpuExpertEngine) on
  random Q4_0 experts, T=1, top-k, cycling over layers whose total size is well beyond
  any L3 (the H100 box has 300 MiB), so the weights stream from DRAM as in a decode step.
  GB/s = expert bytes the routed experts hold / (wall time - calls x the fixed cost above), so
  the cost model's cpu(m) = fixed + m x bytes / bandwidth does not count the fixed part twice.
- The same DRAM figure at the expert shape and top-k of the model being planned
  (`expert_dram_gbps`, keyed "n_embd x n_ff x k", measured once per shape, ~2 s): ggml's rate
  depends on both (H100 box, session 7: 49 GB/s at the default 4096 x 1024 top-2, 56 at
  Mixtral's 4096 x 14336 top-2, 31 at Qwen3's 2048 x 768 measured top-2), and the planner
  prices a model's misses at its own shape.
- Pinned host-to-GPU copies (torch, CUDA only; None elsewhere).
- GPU fp16 GEMV bandwidth (torch, CUDA only): x [1, K] @ W [K, N]. Cache slots hold fp16
  experts today; quantized-GEMV kernels come with the quantized-slot issue, and this figure
  with them.

Results go to `user_cache_dir("edge-moe")/machine-<key>.json`, the key hashing what
identifies the machine (CPU model and cores, GPU names, driver). A file that cannot be read,
parsed or validated is re-measured, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.cost_model import CPU_CALL_FIXED_S
from edge_moe.hardware import HardwareInfo

# bump when a figure changes meaning: older cache files are then re-measured.
# 2: cpu_call_us added; dram_gbps is net of it (schema 1 counted the per-call cost as bytes' time).
SCHEMA = 2
Q4_0_BLOCK_BYTES, Q4_0_BLOCK = 18, 32  # fp16 scale + 16 bytes of nibbles per 32 weights


def _positive(name: str, value: float | None, optional: bool) -> None:
    if value is None and optional:
        return
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"MachineMeasurements.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class MachineMeasurements:
    """Measured bandwidths in GB/s (1e9 bytes/s); GPU figures None without CUDA."""

    dram_gbps: float  # CPU expert path (ggml Q4_0 mul_mat_id) reading DRAM, with `threads`, net of cpu_call_us
    pcie_h2d_gbps: float | None  # pinned host -> GPU copies
    gpu_gemv_gbps: float | None  # fp16 GEMV weight bytes read per second
    threads: int
    measured_at: str  # ISO 8601, UTC
    machine_key: str
    cpu_call_us: float | None = None  # fixed cost of one ggml call, microseconds; None: not measured
    # dram_gbps measured at a model's expert shape, keyed expert_shape_key(n_embd, n_ff, k)
    expert_dram_gbps: dict[str, float] = field(default_factory=dict)
    # the same figure derived from a real run's decode steps (record_run_dram), same keys: what
    # the CPU expert path reached inside decode tokens, where the micro-benchmark's figure was
    # 1.0-2.0x too high on the shared H100 boxes (session 8)
    run_dram_gbps: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("dram_gbps", self.dram_gbps, optional=False)
        for key, gbps in self.expert_dram_gbps.items():
            _positive(f"expert_dram_gbps[{key!r}]", gbps, optional=False)
        for key, gbps in self.run_dram_gbps.items():
            _positive(f"run_dram_gbps[{key!r}]", gbps, optional=False)
        _positive("pcie_h2d_gbps", self.pcie_h2d_gbps, optional=True)
        _positive("gpu_gemv_gbps", self.gpu_gemv_gbps, optional=True)
        _positive("cpu_call_us", self.cpu_call_us, optional=True)
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"MachineMeasurements.threads must be >= 1, got {self.threads!r}")
        if not self.machine_key or not self.measured_at:
            raise ValueError("MachineMeasurements needs a machine_key and a measured_at time")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineMeasurements:
        """Raises ValueError / TypeError / KeyError on anything malformed (the caller re-measures)."""
        if d.get("schema") != SCHEMA:
            raise ValueError(f"cache schema {d.get('schema')!r}, expected {SCHEMA}")
        return cls(dram_gbps=d["dram_gbps"], pcie_h2d_gbps=d["pcie_h2d_gbps"],
                   gpu_gemv_gbps=d["gpu_gemv_gbps"], threads=d["threads"],
                   measured_at=d["measured_at"], machine_key=d["machine_key"], cpu_call_us=d["cpu_call_us"],
                   expert_dram_gbps=dict(d.get("expert_dram_gbps", {})),
                   run_dram_gbps=dict(d.get("run_dram_gbps", {})))

    def dram_gbps_for(self, n_embd: int, n_ff: int, k: int) -> float:
        """DRAM GB/s of the CPU expert path for experts of this shape: from a run's decode steps
        where one was recorded, else measured at the shape where `with_expert_dram` did, else
        the default shape's figure."""
        key = expert_shape_key(n_embd, n_ff, k)
        return self.run_dram_gbps.get(key, self.expert_dram_gbps.get(key, self.dram_gbps))

    def dram_source_for(self, n_embd: int, n_ff: int, k: int) -> str:
        """Where dram_gbps_for's figure comes from: "run", "shape" or "default"."""
        key = expert_shape_key(n_embd, n_ff, k)
        return "run" if key in self.run_dram_gbps else "shape" if key in self.expert_dram_gbps else "default"


def cpu_call_seconds(m: MachineMeasurements | None) -> float:
    """The fixed cost of one ggml call as plans price it: measured where it was, else cost_model's figure."""
    return m.cpu_call_us * 1e-6 if m is not None and m.cpu_call_us else CPU_CALL_FIXED_S


def expert_shape_key(n_embd: int, n_ff: int, k: int) -> str:
    return f"{n_embd}x{n_ff}x{k}"


def _q4_0_matrix_bytes(n_embd: int, n_ff: int) -> int:
    """One [n_embd x n_ff] expert matrix in Q4_0 (both multiples of 32)."""
    return n_embd * n_ff // Q4_0_BLOCK * Q4_0_BLOCK_BYTES


@dataclass(frozen=True)
class DramBenchShape:
    """Synthetic experts for the DRAM benchmark; the default totals ~453 MB (> a 300 MiB L3)."""

    n_layers: int = 8
    n_expert: int = 8
    n_embd: int = 4096
    n_ff: int = 1024
    k: int = 2

    def __post_init__(self) -> None:
        if min(self.n_layers, self.n_expert, self.n_embd, self.n_ff, self.k) < 1 or self.k > self.n_expert:
            raise ValueError(f"invalid benchmark shape {self}")
        if self.n_embd % Q4_0_BLOCK or self.n_ff % Q4_0_BLOCK:
            raise ValueError(f"n_embd and n_ff must be multiples of {Q4_0_BLOCK} for Q4_0")

    @classmethod
    def for_experts(cls, n_embd: int, n_ff: int, k: int = 2, min_bytes: int = 450 << 20) -> DramBenchShape:
        """Experts of this shape, enough of them (>= min_bytes, and >= 3k so a call never
        re-reads the previous calls' experts) to stream from DRAM like the default shape."""
        per_expert = 3 * _q4_0_matrix_bytes(n_embd, n_ff)
        n_total = max(3 * k, -(-min_bytes // per_expert))
        n_expert = max(min(n_total, 8), 3 * k)  # per layer
        return cls(n_layers=-(-n_total // n_expert), n_expert=n_expert, n_embd=n_embd, n_ff=n_ff, k=k)

    @property
    def matrix_bytes(self) -> int:  # one [n_embd x n_ff] matrix of one expert
        return _q4_0_matrix_bytes(self.n_embd, self.n_ff)

    @property
    def total_bytes(self) -> int:
        return 3 * self.matrix_bytes * self.n_expert * self.n_layers


def machine_key(hw: HardwareInfo) -> str:
    """What makes a measurement stale: another CPU, core count, GPU set or driver."""
    parts = [hw.cpu.model, hw.cpu.arch, str(hw.cpu.physical_cores), str(hw.cpu.logical_cores),
             hw.cuda_driver_version or ""]
    parts += [f"{g.name}|{g.total_vram_bytes}|{g.driver_version}" for g in hw.gpus]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _q4_0_tensor(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Random Q4_0 bytes with a finite scale in every block (random fp16 bits could be NaN)."""
    data = rng.integers(0, 256, size=(n_blocks, Q4_0_BLOCK_BYTES), dtype=np.uint8)
    data[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return data.reshape(-1)


# cpu_call_us: experts of 3 x 256 x 128 Q4_0 weights (55 KB), far below any L2, so a call's
# time is its fixed cost plus a few microseconds of compute
CALL_BENCH_SHAPE = DramBenchShape(n_layers=1, n_expert=4, n_embd=256, n_ff=128, k=1)
CALL_BENCH_CALLS = 200  # per expert count: ~10-100 ms on the machines seen so far


def _engine_layers(engine: object, shape: DramBenchShape, rng: np.random.Generator) -> list:
    from gguf.constants import GGMLQuantizationType as Q

    from edge_moe.expert_weights import ExpertWeights, WeightTensor

    s = shape
    n_blocks = s.matrix_bytes * s.n_expert // Q4_0_BLOCK_BYTES

    def tensor(rows: int, cols: int) -> WeightTensor:
        return WeightTensor(_q4_0_tensor(rng, n_blocks), Q.Q4_0, (rows, cols, s.n_expert))

    return [engine.prepare(ExpertWeights(tensor(s.n_embd, s.n_ff), tensor(s.n_embd, s.n_ff),  # type: ignore[attr-defined]
                                         tensor(s.n_ff, s.n_embd))) for _ in range(s.n_layers)]


def measure_cpu_call_us(threads: int, calls: int = CALL_BENCH_CALLS, seed: int = 0) -> float:
    """Fixed microseconds of one T=1 call of the CPU expert path (see the module docstring):
    median per-call time with 1 and with 4 tiny experts, extrapolated linearly to 0 experts;
    the 1-expert median where noise would make that extrapolation <= 0."""
    from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine

    s = CALL_BENCH_SHAPE
    rng = np.random.default_rng(seed)
    with CpuExpertEngine(CpuExpertConfig(n_threads=threads)) as engine:
        layer = _engine_layers(engine, s, rng)[0]
        x = rng.standard_normal((1, s.n_embd), dtype=np.float32)
        out = np.empty_like(x)
        medians = {}
        for k in (1, s.n_expert):
            ids = np.arange(k, dtype=np.int32)[None, :]
            w = np.full((1, k), 1.0 / k, np.float32)
            for _ in range(5):  # warm-up: builds the graph for this k, wakes the threads
                engine.forward(layer, x, ids, w, out)
            times = np.empty(calls)
            for i in range(calls):
                t0 = time.perf_counter()
                engine.forward(layer, x, ids, w, out)
                times[i] = time.perf_counter() - t0
            medians[k] = float(np.median(times))
        layer.close()
    t1, tk = medians[1], medians[s.n_expert]
    fixed = t1 - (tk - t1) / (s.n_expert - 1)
    return (fixed if fixed > 0 else t1) * 1e6


# The DRAM figure is the median of this many windows: single 1 s windows on the H100 box read
# 17-44 GB/s for one shape back to back (session 7), a dip in one window moving the plan.
DRAM_WINDOWS = 3


def measure_dram_gbps(threads: int, seconds: float, shape: DramBenchShape = DramBenchShape(),
                      seed: int = 0, call_us: float = 0.0) -> float:
    """GB/s of the ggml CPU expert path on experts streamed from DRAM, net of `call_us`
    microseconds of fixed cost per call (not subtracted where it would leave under half the time):
    the median over DRAM_WINDOWS windows of `seconds` / DRAM_WINDOWS each."""
    from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine

    rng = np.random.default_rng(seed)
    s = shape
    with CpuExpertEngine(CpuExpertConfig(n_threads=threads)) as engine:
        layers = _engine_layers(engine, s, rng)
        x = rng.standard_normal((1, s.n_embd), dtype=np.float32)
        w = np.full((1, s.k), 1.0 / s.k, np.float32)
        # experts in rotation (k distinct per call, a layer's next call takes the next k), so a
        # layer with few experts does not re-read from L3 what its previous call read
        ids = ((np.arange(256)[:, None] * s.k + np.arange(s.k)[None, :]) % s.n_expert).astype(np.int32)
        out = np.empty_like(x)
        for layer in layers:  # warm-up: builds the graph, touches every page once
            engine.forward(layer, x, np.arange(s.k, dtype=np.int32)[None, :], w, out)
        rates, passes = [], 0
        for _ in range(DRAM_WINDOWS):
            calls, start = 0, time.perf_counter()
            while True:  # whole passes over the layers, so no layer stays hot in the cache
                for layer in layers:
                    engine.forward(layer, x, ids[passes % len(ids)][None, :], w, out)
                    calls += 1
                passes += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / DRAM_WINDOWS:
                    break
            fixed = calls * call_us * 1e-6
            busy = elapsed - fixed if fixed < 0.5 * elapsed else elapsed
            rates.append(calls * s.k * 3 * s.matrix_bytes / busy / 1e9)
        for layer in layers:
            layer.close()
    return float(np.median(rates))


def measure_pcie_h2d_gbps(seconds: float, nbytes: int = 256 << 20) -> float | None:
    """Pinned host -> GPU copy bandwidth, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)  # warm-up
    torch.cuda.synchronize()
    copies, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(4):
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        copies += 4
    elapsed = time.perf_counter() - start
    return copies * nbytes / elapsed / 1e9


def measure_gpu_gemv_gbps(seconds: float, k: int = 4096, n: int = 14336) -> float | None:
    """fp16 GEMV weight bandwidth (x [1, K] @ W [K, N]), or None without CUDA.

    The default W is 117 MB, beyond any GPU's L2 (H100: 50 MB), so it streams from HBM/GDDR.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    x = torch.randn(1, k, dtype=torch.float16, device="cuda")
    weights = torch.randn(k, n, dtype=torch.float16, device="cuda")
    y = x @ weights  # warm-up (cuBLAS handle, kernel selection)
    torch.cuda.synchronize()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            y = x @ weights
        torch.cuda.synchronize()
        calls += 50
    elapsed = time.perf_counter() - start
    del y
    return calls * k * n * 2 / elapsed / 1e9


def measure(threads: int, seconds_budget: float = 3.0, hw: HardwareInfo | None = None,
            dram_shape: DramBenchShape = DramBenchShape()) -> MachineMeasurements:
    """Run the benchmarks within about `seconds_budget` (plus setup: allocating the DRAM
    benchmark's experts takes ~1 s at the default shape; the per-call cost ~0.1 s)."""
    if not (seconds_budget > 0 and math.isfinite(seconds_budget)):
        raise ValueError(f"seconds_budget must be positive, got {seconds_budget}")
    if hw is None:
        from edge_moe.hardware import detect_hardware

        hw = detect_hardware()
    call_us = measure_cpu_call_us(threads)
    dram = measure_dram_gbps(threads, 0.6 * seconds_budget, dram_shape, call_us=call_us)
    pcie = measure_pcie_h2d_gbps(0.2 * seconds_budget)
    gemv = measure_gpu_gemv_gbps(0.2 * seconds_budget)
    return MachineMeasurements(dram_gbps=dram, pcie_h2d_gbps=pcie, gpu_gemv_gbps=gemv, threads=threads,
                               measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               machine_key=machine_key(hw), cpu_call_us=call_us)


def cache_path(hw: HardwareInfo, cache_dir: Path | None = None) -> Path:
    if cache_dir is None:
        import platformdirs

        cache_dir = Path(platformdirs.user_cache_dir("edge-moe"))
    return Path(cache_dir) / f"machine-{machine_key(hw)}.json"


def load_cached(threads: int, hw: HardwareInfo, cache_dir: Path | None = None) -> MachineMeasurements | None:
    """The cached measurements for this machine and thread count, or None (absent, corrupt, stale)."""
    try:
        m = MachineMeasurements.from_dict(json.loads(cache_path(hw, cache_dir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # a corrupt or old file is as good as none: measure again
    # DRAM GB/s depends on the thread count; a file for another machine cannot share our key
    return m if m.threads == threads and m.machine_key == machine_key(hw) else None


def save(m: MachineMeasurements, hw: HardwareInfo, cache_dir: Path | None = None) -> Path | None:
    """Write atomically (a crash never leaves half a file); None if the directory is not writable."""
    path = cache_path(hw, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(m.to_dict(), f, indent=2)
        os.replace(tmp, path)
    except OSError:
        return None  # a read-only cache dir costs a re-measurement next time, nothing more
    return path


def with_expert_dram(m: MachineMeasurements, n_embd: int, n_ff: int, k: int, hw: HardwareInfo,
                     cache_dir: Path | None = None, seconds: float = 1.0,
                     min_expert_bytes: int = 1 << 20) -> MachineMeasurements:
    """`m` with the DRAM figure at this expert shape and top-k (k experts a call): cached, or measured now (~1 s plus
    allocating ~450 MB of experts) and saved with the machine's other figures. Shapes the
    Q4_0 benchmark cannot build (not multiples of 32) and experts under `min_expert_bytes`
    (their calls cost the fixed part, not bytes; and 450 MB of them is a great many ggml
    tensors) keep the default figure."""
    key = expert_shape_key(n_embd, n_ff, k)
    if (key in m.expert_dram_gbps or k < 1 or n_embd % Q4_0_BLOCK or n_ff % Q4_0_BLOCK
            or 3 * _q4_0_matrix_bytes(n_embd, n_ff) < max(min_expert_bytes, 1)):
        return m
    gbps = measure_dram_gbps(m.threads, seconds, DramBenchShape.for_experts(n_embd, n_ff, k), call_us=m.cpu_call_us or 0.0)
    out = replace(m, expert_dram_gbps={**m.expert_dram_gbps, key: gbps})
    save(out, hw, cache_dir)
    return out


def record_run_dram(threads: int, hw: HardwareInfo, n_embd: int, n_ff: int, k: int, gbps: float,
                    cache_dir: Path | None = None) -> Path | None:
    """Keep `gbps`, the DRAM figure a run's decode steps reached at this expert shape and top-k,
    beside the machine's measurements for `threads`: later plans price CPU misses with it. None
    where there are no measurements to keep it with, or the cache dir is not writable."""
    m = load_cached(threads, hw, cache_dir)
    if m is None or not (math.isfinite(gbps) and gbps > 0):
        return None
    return save(replace(m, run_dram_gbps={**m.run_dram_gbps, expert_shape_key(n_embd, n_ff, k): gbps}), hw, cache_dir)


def load_or_measure(threads: int, cache_dir: Path | None = None, refresh: bool = False,
                    hw: HardwareInfo | None = None, seconds_budget: float = 3.0,
                    dram_shape: DramBenchShape = DramBenchShape()) -> MachineMeasurements:
    """Cached measurements of this machine, measuring (and caching) when absent, stale or `refresh`."""
    if hw is None:
        from edge_moe.hardware import detect_hardware

        hw = detect_hardware()
    if not refresh and (cached := load_cached(threads, hw, cache_dir)) is not None:
        return cached
    m = measure(threads, seconds_budget, hw, dram_shape)
    save(m, hw, cache_dir)
    return m
