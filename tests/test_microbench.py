"""Micro-benchmarks on this (CPU) machine with a tiny shape, and the per-machine cache file."""

from __future__ import annotations

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


def test_cache_round_trip_and_corrupt_file(hw: HardwareInfo, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = mb.measure

    def counting(*a: object, **k: object) -> mb.MachineMeasurements:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mb, "measure", counting)
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
