"""Micro-benchmarks on this (CPU) machine with a tiny shape, and the per-machine cache file."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import pytest

from edge_moe import microbench as mb
from edge_moe.hardware import HardwareInfo
from tests.fake_machines import MACHINES

TINY = mb.DramBenchShape(n_layers=2, n_expert=4, n_embd=256, n_ff=128, k=2)


@pytest.fixture
def hw(tmp_path: Path) -> HardwareInfo:
    return MACHINES["cpu_only"]().detect(tmp_path)


def test_measure_on_cpu(hw: HardwareInfo) -> None:
    m = mb.measure(threads=1, seconds_budget=0.2, hw=hw, dram_shape=TINY)
    assert m.dram_gbps > 0
    import torch

    if not torch.cuda.is_available():
        assert m.pcie_h2d_gbps is None and m.gpu_gemv_gbps is None
    assert m.machine_key == mb.machine_key(hw) and m.threads == 1
    assert m.cpu_call_us is not None and m.cpu_call_us > 0


def count_measures(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """mb.measure, counted: one entry per real measurement."""
    calls: list[int] = []
    real = mb.measure

    def counting(*a: object, **k: object) -> mb.MachineMeasurements:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mb, "measure", counting)
    return calls


def test_cache_round_trip_and_corrupt_file(hw: HardwareInfo, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_measures(monkeypatch)
    kw = dict(cache_dir=tmp_path, hw=hw, seconds_budget=0.1, dram_shape=TINY)
    first = mb.load_or_measure(1, **kw)
    assert mb.load_or_measure(1, **kw) == first and len(calls) == 1  # cached
    mb.load_or_measure(2, **kw)  # other thread count: re-measured
    assert len(calls) == 2
    path = mb.cache_path(hw, tmp_path)
    for junk in ("{not json", "[]", '{"schema": 1, "dram_gbps": -3}', ""):
        path.write_text(junk)
        again = mb.load_or_measure(1, **kw)
        assert again.dram_gbps > 0
    assert len(calls) == 6
    assert mb.load_or_measure(1, refresh=True, **kw).dram_gbps > 0 and len(calls) == 7


def test_machine_key_changes_with_the_gpu(tmp_path: Path) -> None:
    keys = {mb.machine_key(MACHINES[n]().detect(tmp_path)) for n in ("cpu_only", "laptop_4060", "desktop_3060")}
    assert len(keys) == 3


def test_measurements_validated() -> None:
    with pytest.raises(ValueError):
        mb.MachineMeasurements(0.0, None, None, 1, "t", "k")
    with pytest.raises(ValueError):
        mb.MachineMeasurements(1.0, float("nan"), None, 1, "t", "k")
    with pytest.raises(ValueError):
        mb.DramBenchShape(n_embd=100)


def test_cpu_call_cost_is_measured_and_cached(hw: HardwareInfo, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # schema 2 adds cpu_call_us (and dram_gbps is net of it): a schema-1 file is re-measured
    calls = count_measures(monkeypatch)
    path = mb.cache_path(hw, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = {"schema": 1, "dram_gbps": 25.0, "pcie_h2d_gbps": None, "gpu_gemv_gbps": None, "threads": 1,
           "measured_at": "2026-11-24T00:00:00+00:00", "machine_key": mb.machine_key(hw)}
    path.write_text(json.dumps(old))
    assert mb.load_cached(1, hw, tmp_path) is None
    m = mb.load_or_measure(1, cache_dir=tmp_path, hw=hw, seconds_budget=0.1, dram_shape=TINY)
    assert len(calls) == 1 and m.cpu_call_us is not None and m.cpu_call_us > 0
    saved = json.loads(path.read_text())
    assert saved["schema"] == mb.SCHEMA == 2 and saved["cpu_call_us"] == m.cpu_call_us
    assert mb.MachineMeasurements.from_dict(saved) == m
    assert mb.load_or_measure(1, cache_dir=tmp_path, hw=hw, seconds_budget=0.1, dram_shape=TINY) == m
    assert len(calls) == 1  # cached
    saved.pop("cpu_call_us")  # a schema-2 file without the figure is malformed: measured again
    path.write_text(json.dumps(saved))
    assert mb.load_cached(1, hw, tmp_path) is None


def test_cpu_call_us_validated() -> None:
    ok = mb.MachineMeasurements(1.0, None, None, 1, "t", "k")  # not measured: the planner's constant
    assert ok.cpu_call_us is None
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cpu_call_us"):
            mb.MachineMeasurements(1.0, None, None, 1, "t", "k", cpu_call_us=bad)


def test_measure_cpu_call_us_on_cpu() -> None:
    assert mb.measure_cpu_call_us(threads=1, calls=20) > 0


def test_expert_shape_dram_is_measured_once_and_cached(hw: HardwareInfo, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """with_expert_dram measures the model's expert shape once, saves it beside the machine's
    figures, and dram_gbps_for picks it (the default figure for shapes not measured)."""
    base = mb.load_or_measure(1, cache_dir=tmp_path, hw=hw, seconds_budget=0.1, dram_shape=TINY)
    shapes: list[mb.DramBenchShape] = []
    real = mb.measure_dram_gbps

    def counting(threads: int, seconds: float, shape: mb.DramBenchShape = TINY, **k: object) -> float:
        shapes.append(shape)
        return real(threads, 0.05, TINY, **k)  # the tiny shape stands in for the 450 MB one here

    monkeypatch.setattr(mb, "measure_dram_gbps", counting)
    assert mb.with_expert_dram(base, 256, 128, 2, hw, cache_dir=tmp_path) is base  # 55 KB experts: not measured
    assert not shapes
    m = mb.with_expert_dram(base, 256, 128, 2, hw, cache_dir=tmp_path, min_expert_bytes=0)
    assert len(shapes) == 1 and (shapes[0].n_embd, shapes[0].n_ff, shapes[0].k) == (256, 128, 2)
    assert m.expert_dram_gbps.keys() == {"256x128x2"} and m.dram_gbps_for(256, 128, 2) == m.expert_dram_gbps["256x128x2"]
    assert m.dram_gbps_for(512, 128, 2) == base.dram_gbps  # not measured: the default shape's figure
    assert m.dram_gbps_for(256, 128, 8) == base.dram_gbps  # another top-k is another call shape
    assert mb.with_expert_dram(m, 256, 128, 2, hw, cache_dir=tmp_path, min_expert_bytes=0) is m and len(shapes) == 1
    cached = mb.load_or_measure(1, cache_dir=tmp_path, hw=hw, seconds_budget=0.1, dram_shape=TINY)
    assert cached == m  # saved with the machine's other figures
    assert mb.with_expert_dram(cached, 100, 128, 2, hw, cache_dir=tmp_path, min_expert_bytes=0) is cached  # not Q4_0

    assert len(shapes) == 1
    path = mb.cache_path(hw, tmp_path)
    d = json.loads(path.read_text())
    d["expert_dram_gbps"] = {"256x128x2": -1.0}
    path.write_text(json.dumps(d))
    assert mb.load_cached(1, hw, tmp_path) is None  # an invalid figure: re-measured, never used


def test_a_runs_dram_figure_is_kept_and_wins(hw: HardwareInfo, tmp_path: Path) -> None:
    """record_run_dram keeps a run's figure beside the machine's measurements; dram_gbps_for
    prefers it for that shape and top-k only; nothing is written without measurements."""
    assert mb.record_run_dram(1, hw, 256, 128, 2, 33.0, cache_dir=tmp_path) is None  # nothing measured yet
    assert not mb.cache_path(hw, tmp_path).exists()
    base = mb.load_or_measure(1, cache_dir=tmp_path, hw=hw, seconds_budget=0.1, dram_shape=TINY)
    shaped = dataclasses.replace(base, expert_dram_gbps={"256x128x2": 50.0})
    mb.save(shaped, hw, tmp_path)
    assert mb.record_run_dram(2, hw, 256, 128, 2, 33.0, cache_dir=tmp_path) is None  # another thread count
    for bad in (0.0, -1.0, float("nan")):
        assert mb.record_run_dram(1, hw, 256, 128, 2, bad, cache_dir=tmp_path) is None
    assert mb.record_run_dram(1, hw, 256, 128, 2, 33.0, cache_dir=tmp_path) == mb.cache_path(hw, tmp_path)
    m = mb.load_cached(1, hw, tmp_path)
    assert m is not None and m.run_dram_gbps == {"256x128x2": 33.0} and m.expert_dram_gbps == {"256x128x2": 50.0}
    assert m.dram_gbps_for(256, 128, 2) == 33.0 and m.dram_source_for(256, 128, 2) == "run"
    assert m.dram_gbps_for(256, 128, 8) == base.dram_gbps and m.dram_source_for(256, 128, 8) == "default"
    assert shaped.dram_source_for(256, 128, 2) == "shape"
    # files written before session 8 have no run figures; an invalid one is refused as a whole
    d = json.loads(mb.cache_path(hw, tmp_path).read_text())
    del d["run_dram_gbps"]
    assert mb.MachineMeasurements.from_dict(d).run_dram_gbps == {}
    d["run_dram_gbps"] = {"256x128x2": -3.0}
    with pytest.raises(ValueError, match="run_dram_gbps"):
        mb.MachineMeasurements.from_dict(d)


@pytest.mark.parametrize("n_embd, n_ff, k", [(4096, 14336, 2), (2048, 768, 8), (4096, 1024, 2)])
def test_expert_shape_benchmark_streams_from_dram(n_embd: int, n_ff: int, k: int) -> None:
    s = mb.DramBenchShape.for_experts(n_embd, n_ff, k)
    assert (s.n_embd, s.n_ff, s.k) == (n_embd, n_ff, k)
    assert s.total_bytes >= 450 << 20  # beyond any L3 (300 MiB on the H100 box)
    assert s.n_expert >= 3 * s.k  # rotation: a call's experts are not the previous call's
    assert s.total_bytes < 2 * (450 << 20) + 3 * s.k * 3 * s.matrix_bytes  # and not much more
