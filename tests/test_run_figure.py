"""The DRAM figure of decode steps outside the bench: the executor's decode-only CPU counters,
`bench_stats.keep_run_figure`, and `edge-moe run` keeping it (or not) in the user cache dir.

The real tiny Mixtral runs on the CPU. The figure's thresholds (0.5 s and 100 calls of CPU work,
CUDA runs only) are for real models; tests swap in a policy any tiny run meets (`relaxed`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from edge_moe import bench_stats
from edge_moe import microbench as mb
from edge_moe.bench_stats import FigurePolicy, FigureTerms, decode_dram_figure, keep_run_figure
from edge_moe.cli import main
from edge_moe.executor import ExecutorConfig, HybridModel
from edge_moe.expert_cache import CacheConfig
from edge_moe.gpu_experts import GpuExpertsConfig
from edge_moe.hardware import HardwareInfo, detect_hardware

THREADS = 2
ANY_RUN = FigurePolicy(min_cpu_seconds=0.0, min_cpu_calls=1, devices=("cuda", "cpu"))


@pytest.fixture(scope="module")
def model_path(tiny_gguf: Callable[[str, str], Path]) -> Path:
    return tiny_gguf("mixtral", "q8_0")


@pytest.fixture(scope="module")
def hw() -> HardwareInfo:
    return detect_hardware()


def seed_measurements(hw: HardwareInfo, cache_dir: Path | None = None, threads: int = THREADS) -> Path:
    """This machine's measurements for `threads`, as a micro-benchmark would have left them."""
    m = mb.MachineMeasurements(dram_gbps=10.0, pcie_h2d_gbps=None, gpu_gemv_gbps=None, threads=threads,
                               measured_at="2026-11-24T00:00:00+00:00", machine_key=mb.machine_key(hw),
                               cpu_call_us=1.0)
    path = mb.save(m, hw, cache_dir)
    assert path is not None
    return path


@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """platformdirs' user cache dir moved under tmp_path (edge-moe's measurements live there)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "edge-moe"


@pytest.fixture
def relaxed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(bench_stats, "RUN_FIGURE_POLICY", ANY_RUN)
    yield


def _model(path: Path, **kw: object) -> HybridModel:
    return HybridModel(path, ExecutorConfig(device="cpu", n_threads=THREADS, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("graphs", ["off", "uncaptured"])
def test_decode_counters_count_one_token_forwards_only(model_path: Path, graphs: str) -> None:
    """Eager `_moe` and the decode-graph loop: a prompt (even its last chunk of one token) adds
    nothing; each one-token forward adds one call per layer with all k experts (no cache)."""
    m = _model(model_path, prefill_chunk=4, decode_graphs=graphs)
    try:
        n, k = m.cfg.n_layer, m.cfg.n_expert_used
        m.forward([1, 2, 3, 4, 5], last_only=True)  # chunks of 4 and 1 tokens
        assert m.timings.cpu_calls == 2 * n and m.timings.cpu_experts > 0
        assert (m.decode_cpu.seconds, m.decode_cpu.calls, m.decode_cpu.misses) == (0.0, 0, [0] * n)
        before = m.decode_cpu.copy()
        for t in (6, 7, 8):
            m.forward([t], last_only=True)
        d = m.decode_cpu.since(before)
        assert d.calls == 3 * n and d.misses == [3 * k] * n
        assert 0 < d.seconds <= m.timings.cpu_experts
        assert set(m.timings.as_dict()) == {"attention", "router_sync", "cpu_experts", "gpu_experts_enqueue"}
    finally:
        m.close()


@pytest.mark.parametrize("graphs", ["off", "uncaptured"] + (["on"] if torch.cuda.is_available() else []))
def test_decode_misses_follow_the_cache(model_path: Path, graphs: str) -> None:
    """With a partial cache the decode counters hold the CPU's share: the cache's decode misses,
    one call per layer step that missed anything (the decode graphs' hits run the Triton kernels:
    compiled on CUDA, where "on" captures the graphs; without CUDA Triton's interpreter runs them
    on the CPU)."""
    if graphs != "off":
        pytest.importorskip("triton")
    kernels = "triton" if graphs != "off" else "auto"
    device = "cuda" if graphs != "off" and torch.cuda.is_available() else "cpu"
    m = HybridModel(model_path, ExecutorConfig(device=device, n_threads=THREADS, decode_graphs=graphs,
                                               cache=GpuExpertsConfig(CacheConfig(2, 3, "LRU"), kernels=kernels)))
    try:
        m.forward(list(range(1, 9)))
        stats = m.gpu.cache.stats
        miss0, calls0 = list(stats.misses_by_layer), m.timings.cpu_calls
        for t in range(10, 22):
            m.forward([t])
        assert m.decode_cpu.misses == [b - a for a, b in zip(miss0, stats.misses_by_layer)]
        assert m.decode_cpu.calls == m.timings.cpu_calls - calls0
        assert 0 < sum(m.decode_cpu.misses) < 12 * m.cfg.n_layer * m.cfg.n_expert_used  # some hits
    finally:
        m.close()


def test_keep_run_figure_inverts_and_records(model_path: Path, hw: HardwareInfo, tmp_path: Path) -> None:
    m = _model(model_path)
    try:
        m.forward([1, 2, 3, 4])
        for t in range(5, 25):
            m.forward([t])
        # nothing to keep it with yet (no measurements for these threads); the figure is still computed
        first = keep_run_figure(m, policy=ANY_RUN, cache_dir=tmp_path, hw=hw)
        assert first.gbps is not None and not first.recorded and "no measurements" in first.note
        path = seed_measurements(hw, tmp_path)
        kept = keep_run_figure(m, policy=ANY_RUN, cache_dir=tmp_path, hw=hw)
        d = m.decode_cpu
        n, k = m.cfg.n_layer, m.cfg.n_expert_used
        shape = f"{m.cfg.n_embd}x{m.cfg.n_ff_expert}x{k}"
        assert (kept.cpu_calls, kept.threads, kept.shape) == (20 * n, THREADS, shape)
        from edge_moe.expert_bytes import quantized_expert_bytes

        terms = FigureTerms(quantized_expert_bytes(m.gguf, m.cfg), 1e-6)  # CPU device: no repack gain
        by_hand = terms.expert_bytes * 20 * n * k / (d.seconds - d.calls * 1e-6) / 1e9
        assert kept.recorded and kept.gbps == pytest.approx(by_hand) and "kept for plans" in kept.note
        assert decode_dram_figure(d.seconds, d.calls, d.misses, [False] * n, terms, ANY_RUN) == pytest.approx(by_hand)
        saved = mb.load_cached(THREADS, hw, tmp_path)
        assert saved is not None and saved.run_dram_gbps == {kept.shape: pytest.approx(kept.gbps)}
        json.dumps(kept.to_dict())
        # the real policy: a CPU-device run keeps nothing, nor does tiny work
        before = path.read_text()
        assert not keep_run_figure(m, cache_dir=tmp_path, hw=hw).recorded
        assert "not kept" in keep_run_figure(m, policy=FigurePolicy(devices=("cuda",), min_cpu_seconds=0.0,
                                                                      min_cpu_calls=1),
                                             cache_dir=tmp_path, hw=hw).note
        assert keep_run_figure(m, cache_dir=tmp_path, hw=hw).gbps is None  # under 0.5 s and 100 calls
        off = keep_run_figure(m, record=False, policy=ANY_RUN, cache_dir=tmp_path, hw=hw)
        assert not off.recorded and "--no-record-figures" in off.note
        assert path.read_text() == before
        # a cache dir that cannot be used (a file in its place) skips, never raises
        blocked = tmp_path / "blocked"
        blocked.write_text("")
        assert not keep_run_figure(m, policy=ANY_RUN, cache_dir=blocked / "edge-moe", hw=hw).recorded
    finally:
        m.close()


def test_policy_validated() -> None:
    with pytest.raises(ValueError, match="min_cpu_calls"):
        FigurePolicy(min_cpu_calls=0)
    with pytest.raises(ValueError, match="devices"):
        FigurePolicy(devices=("tpu",))
    with pytest.raises(ValueError, match="expert_bytes"):
        FigureTerms(0, 1e-6)


def _run(model_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main(["run", "-m", str(model_path), "-n", "24", "--temp", "0", "-t", str(THREADS), "--device", "cpu",
                 "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_records_the_figure_unless_told_not_to(model_path: Path, hw: HardwareInfo, user_cache: Path,
                                                   relaxed: None, capsys: pytest.CaptureFixture[str]) -> None:
    path = seed_measurements(hw)
    assert path.parent == user_cache  # the seeded file is where `run` looks
    before = path.read_text()
    off = _run(model_path, capsys, "--no-record-figures")["run_figure"]
    assert off["gbps"] > 0 and not off["recorded"] and path.read_text() == before
    report = _run(model_path, capsys)
    fig = report["run_figure"]
    # the prompt's forward is no decode step: 23 one-token steps after it, a call per layer each
    assert fig["recorded"] and fig["cpu_calls"] == 23 * 2 and fig["threads"] == THREADS
    saved = mb.load_cached(THREADS, hw)
    assert saved is not None and saved.run_dram_gbps == {fig["shape"]: pytest.approx(fig["gbps"])}
    # text mode says what was kept, on stderr beside the timings
    assert main(["run", "-m", str(model_path), "-n", "4", "--temp", "0", "-t", str(THREADS), "--device", "cpu",
                 "--no-record-figures"]) == 0
    assert "run figure: DRAM" in capsys.readouterr().err


def test_run_on_the_cpu_device_keeps_nothing_by_default(model_path: Path, hw: HardwareInfo, user_cache: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The real policy: only CUDA runs keep a figure (and 24 tiny tokens are too little work anyway)."""
    path = seed_measurements(hw)
    before = path.read_text()
    fig = _run(model_path, capsys)["run_figure"]
    assert not fig["recorded"] and path.read_text() == before
