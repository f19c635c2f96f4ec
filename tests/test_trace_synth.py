"""The synthetic routing-trace generator: format, determinism, and that its knobs do what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_moe.trace import ReplayRouting
from edge_moe.trace_synth import (TraceParams, consecutive_share, lru_hit_rate, main, save_trace,
                                  synthetic_trace)

SHARED_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "mixtral-8x7b-instruct-humaneval.npz"


def test_shape_distinct_and_seeded() -> None:
    p = TraceParams(40, 3, 16, 4, zipf=0.8, reuse=0.5, seed=1)
    e, w = synthetic_trace(p)
    assert e.shape == w.shape == (40, 3, 4) and e.dtype == np.int16 and w.dtype == np.float32
    assert e.min() >= 0 and e.max() < 16
    assert all(len(set(e[t, l].tolist())) == 4 for t in range(40) for l in range(3))  # noqa: E741
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert (np.diff(w, axis=-1) <= 0).all()  # gate order: largest first
    e2, _ = synthetic_trace(p)
    assert (e == e2).all()
    e3, _ = synthetic_trace(TraceParams(40, 3, 16, 4, zipf=0.8, reuse=0.5, seed=2))
    assert (e != e3).any()


def test_knobs_raise_locality() -> None:
    base = dict(n_tokens=200, n_layer=2, n_expert=32, k=4, seed=0)
    uniform, _ = synthetic_trace(TraceParams(**base, zipf=0.0, reuse=0.0))
    skewed, _ = synthetic_trace(TraceParams(**base, zipf=1.0, reuse=0.0))
    reused, _ = synthetic_trace(TraceParams(**base, zipf=0.0, reuse=0.5))
    u = lru_hit_rate(uniform, 8)
    assert 0.15 < u < 0.35  # ~ 8/32 for uniform routing
    assert lru_hit_rate(skewed, 8) > u + 0.1
    assert lru_hit_rate(reused, 8) > u + 0.1
    assert consecutive_share(reused) > consecutive_share(uniform)
    frozen, _ = synthetic_trace(TraceParams(**base, zipf=0.0, reuse=1.0))
    assert (np.sort(frozen[1:], -1) == np.sort(frozen[:-1], -1)).all()  # reuse 1: the same set forever


def test_saved_trace_replays(tmp_path: Path) -> None:
    path = save_trace(tmp_path / "t.npz", TraceParams(10, 4, 8, 2))
    r = ReplayRouting.load(path)
    r.check_model(4, 8, 2)
    assert r.for_positions(0, 3).shape == (4, 3, 2)
    assert "zipf" in str(np.load(path)["meta"])


@pytest.mark.skipif(not SHARED_TRACE.is_file(), reason="../shared/traces not present")
def test_lru_hit_rate_agrees_with_the_simulator() -> None:
    from edge_moe.expert_cache import CacheConfig
    from edge_moe.simulator import MachineFigures, admission_config, simulate

    experts = np.load(SHARED_TRACE)["experts_0"].astype(np.int64)
    fig = MachineFigures(43.0, 55.0, 1e-5)
    for ways in (2, 4):
        cfg = CacheConfig(32, ways, admission=admission_config("all", None, fig, 10**8))
        expected = simulate(experts, cfg, 10**8, 8, fig).hit_rate
        assert lru_hit_rate(experts, ways) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("bad", [dict(k=9), dict(zipf=-1.0), dict(reuse=1.5), dict(n_tokens=0)])
def test_bad_params(bad: dict) -> None:
    args = dict(n_tokens=4, n_layer=2, n_expert=8, k=2) | bad
    with pytest.raises(ValueError):
        TraceParams(**args)


def test_cli_writes_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--shape", "mixtral", "--tokens", "16", "--out", str(tmp_path / "m.npz")]) == 0
    assert np.load(tmp_path / "m.npz")["experts_0"].shape == (16, 32, 2)
    with pytest.raises(SystemExit):
        main(["--reuse", "2"])
    assert "reuse" in capsys.readouterr().err
