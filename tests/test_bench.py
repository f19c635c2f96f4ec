"""`edge-moe bench` on the tiny Mixtral GGUF, on the CPU: protocol, counters, replay, errors, profiler."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_moe.bench import BenchConfig, RunResult, mean_std, run_bench
from edge_moe.bench_stats import cpu_in_situ
from edge_moe.cli import main
from edge_moe.trace_synth import TraceParams, save_trace


@pytest.fixture(scope="module")
def model(tiny_gguf: Callable[[str, str], Path]) -> Path:
    return tiny_gguf("mixtral", "q8_0")


def _slot_gib(model: Path) -> float:
    from edge_moe.gguf_file import GGUFFile
    from edge_moe.gpu_experts import slot_nbytes
    from edge_moe.model_config import read_config

    with GGUFFile(model) as g:
        return slot_nbytes(g, read_config(g)) / 2**30


def small(model: Path, **kw: object) -> BenchConfig:
    args: dict = dict(model=model, prompt_tokens=8, gen_tokens=5, repeats=3, threads=2, device="cpu")
    return BenchConfig(**(args | kw))


def test_no_cache_runs_the_protocol(model: Path) -> None:
    r = run_bench(small(model))
    json.dumps(r)
    assert r["complete"] and len(r["runs"]) == 3 and r["cache"] is None
    assert all(run["decode_tokens"] == 5 and run["decode_tps"] > 0 and run["prefill_tps"] > 0 for run in r["runs"])
    assert all(run["ttft_seconds"] >= run["prefill_seconds"] for run in r["runs"])
    m = r["model"]
    per_token = m["n_layer"] * m["k"] * m["expert_bytes"]  # every routed expert read by the CPU
    assert r["summary"]["dram_bytes_per_token"]["mean"] == per_token
    assert r["summary"]["pcie_bytes_per_token"]["mean"] == 0 and r["summary"]["hit_rate"]["mean"] == 0
    assert r["summary"]["decode_tps"]["n"] == 3
    b = r["breakdown"]
    assert b["tokens"] == 1 and len(b["per_layer_ms"]["attention"]) == m["n_layer"]
    assert b["total_ms"]["attention"] > 0 and b["total_ms"]["cpu_experts"] > 0
    assert b["total_ms"]["gpu_experts"] == 0  # nothing cached
    p = r["prefill_breakdown"]  # one more prefill, profiled: the whole prompt's time per layer
    assert p["prompt_tokens"] == 8 and p["tokens"] == 1 and p["total_ms"]["cpu_experts"] > 0
    assert 0 < p["layers_ms"] <= p["token_ms"]
    assert r["memory"]["host"]["peak_rss_bytes"] > 0 and r["memory"]["gpu"] == {}
    # the CPU path as the decode steps saw it: one call per layer and token, every routed expert
    assert all(run["decode_cpu_calls"] == 5 * m["n_layer"] and run["decode_cpu_seconds"] > 0 for run in r["runs"])
    cpu = r["cpu_in_situ"]
    measured = [5 * per_token / run["decode_cpu_seconds"] / 1e9 for run in r["runs"]]
    assert cpu["gbps"]["mean"] == pytest.approx(sum(measured) / 3)
    assert cpu["planned_gbps"]["mean"] > 0 and cpu["predicted_decode_tps_at_in_situ"]["mean"] > 0
    assert r["recorded_dram_gbps"] is None  # CPU-device runs keep no figure for CUDA plans


def test_replay_of_a_fixed_set_hits_every_time(model: Path, tmp_path: Path) -> None:
    """reuse 1: every token routes to the same 2 experts per layer; a 2-way cache filled during
    the warmup then hits on every decode lookup and never fills (counters and replay are wired)."""
    trace = save_trace(tmp_path / "fixed.npz", TraceParams(64, 2, 8, 2, zipf=0.0, reuse=1.0, seed=3))
    r = run_bench(small(model, routing="replay", trace=trace, gpu_budget_gib=2.5 * 2 * _slot_gib(model)))
    assert r["cache"]["n_ways"] == 2
    s = r["summary"]
    assert s["hit_rate"]["mean"] == 1.0 and s["fills_per_token"]["mean"] == 0.0
    assert s["dram_bytes_per_token"]["mean"] == 0.0
    assert r["breakdown"]["total_ms"]["gpu_experts"] > 0
    assert r["cpu_in_situ"] is None  # no CPU work in the decode steps: nothing to measure
    # natural routing through the same cache misses some of the time
    nat = run_bench(small(model, gpu_budget_gib=2.5 * _slot_gib(model)))
    assert nat["cache"]["n_ways"] == 1 and nat["summary"]["hit_rate"]["mean"] < 1.0
    h, mi, f = np.array([run["decode_hits_misses_fills"] for run in nat["runs"]]).sum(0)
    expert_bytes = nat["model"]["expert_bytes"]
    assert nat["summary"]["dram_bytes_per_token"]["mean"] == pytest.approx((mi + f) * expert_bytes / 15)


def test_deadline_marks_the_result_incomplete(model: Path) -> None:
    r = run_bench(small(model, gen_tokens=50, max_seconds=1e-3, profile_tokens=0))
    assert not r["complete"] and len(r["runs"]) == 1 and r["runs"][0]["decode_tokens"] < 50
    assert r["breakdown"] is None and r["prefill_breakdown"] is None


@pytest.mark.parametrize("bad,msg", [
    (dict(model=Path("/nonexistent.gguf")), "no such model file"),
    (dict(routing="oracle"), "routing"),
    (dict(routing="replay"), "needs a trace"),
    (dict(routing="replay", trace=Path("/nonexistent.npz")), "no such trace"),
    (dict(repeats=0), "repeats"),
    (dict(vram_budget_gib=-6.0), "vram_budget_gib"),
    (dict(vram_budget_gib=6.0, gpu_budget_gib=1.0), "either"),
])
def test_config_validated(model: Path, bad: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        small(bad.get("model", model), **{k: v for k, v in bad.items() if k != "model"})


def test_cli_one_line_errors_and_json(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "-m", str(tmp_path / "absent.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such model file" in err
    assert main(["bench", "-m", str(model), "--vram-budget", "0"]) == 2
    assert "vram_budget_gib" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["bench", "-m", str(model), "-p", "4", "-n", "2", "-r", "1", "-t", "2", "--device", "cpu",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "decode" in text and "| **all** |" in text
    assert json.loads(out.read_text())["summary"]["decode_tps"]["n"] == 1


def test_profiler_changes_no_numbers_and_is_off_by_default(model: Path) -> None:
    from edge_moe.executor import ExecutorConfig, HybridModel
    from edge_moe.layer_profile import PHASES, LayerProfiler

    m = HybridModel(model, ExecutorConfig(device="cpu", n_threads=2))
    try:
        assert m.profiler is None
        ref = m.forward([1, 2, 3])
        m.reset(0)
        m.profiler = LayerProfiler(m.device, m.cfg.n_layer)
        out = m.forward([1, 2, 3])
        torch.testing.assert_close(out, ref)
        d = m.profiler.to_dict()
        assert d["tokens"] == 1 and set(PHASES) <= set(d["total_ms"])
    finally:
        m.close()
    with_flag = HybridModel(model, ExecutorConfig(device="cpu", n_threads=2, profile_layers=True))
    assert isinstance(with_flag.profiler, LayerProfiler)
    with_flag.close()


def test_cpu_in_situ_by_hand() -> None:
    """Two layers, one with cache slots (zero-copy experts), one without (repacked): 10 misses
    each of 1 MB experts in 10 tokens, 20 calls, 20 ms of CPU phase."""
    from types import SimpleNamespace

    from edge_moe.cost_model import REPACK_DRAM_GAIN as g

    plan = SimpleNamespace(dram_gbps=10.0, expert_bytes=10**6, cpu_call_seconds=1e-4, device="cuda")
    run = RunResult(8, 1.0, 1.0, 10, 0.5, (0, 0, 0), (0, 20, 0), 0.02, 20, (10, 10))
    d = cpu_in_situ([run, run], plan, 50.0, [True, False])
    t_plan = 20 * 1e-4 + 1e7 / 1e10 + 1e7 / (1e10 * g)
    assert d["gbps"]["mean"] == pytest.approx(2e7 / 0.02 / 1e9) and d["gbps"]["n"] == 2
    assert d["planned_gbps"]["mean"] == pytest.approx(2e7 / t_plan / 1e9)
    # the prediction keeps everything but its CPU time, which becomes the measured one
    assert d["predicted_decode_tps_at_in_situ"]["mean"] == pytest.approx(1 / (1 / 50 + (0.02 - t_plan) / 10))
    # a CPU-device plan assumes no repacking; runs without CPU work give nothing
    cpu_plan = SimpleNamespace(**(vars(plan) | {"device": "cpu"}))
    assert cpu_in_situ([run], cpu_plan, 50.0, [True, False])["planned_gbps"]["mean"] == pytest.approx(
        2e7 / (2e-3 + 2e7 / 1e10) / 1e9)
    idle = RunResult(8, 1.0, 1.0, 10, 0.5, (0, 0, 0), (20, 0, 0), 0.0, 0, (0, 0))
    assert cpu_in_situ([idle], plan, 50.0, [True, False]) is None


def test_run_dram_figure_inverts_the_cost_model() -> None:
    """The figure that, put into the plan, makes its CPU time equal the measured one; None on
    too little work."""
    from types import SimpleNamespace

    from edge_moe.bench_stats import MIN_RUN_CPU_CALLS, run_dram_figure

    plan = SimpleNamespace(dram_gbps=10.0, expert_bytes=10**6, cpu_call_seconds=1e-4, device="cuda")
    run = RunResult(8, 1.0, 1.0, 100, 5.0, (0, 0, 0), (0, 200, 0), 0.4, 100, (100, 100))
    d = run_dram_figure([run, run], plan, [True, False])
    refit = SimpleNamespace(**(vars(plan) | {"dram_gbps": d}))
    assert cpu_in_situ([run], refit, 50.0, [True, False])["planned_gbps"]["mean"] == pytest.approx(
        cpu_in_situ([run], refit, 50.0, [True, False])["gbps"]["mean"])
    assert run_dram_figure([run], plan, [True, False]) is None  # 0.4 s of CPU work: too little to keep
    few = RunResult(8, 1.0, 1.0, 5, 5.0, (0, 0, 0), (0, 10, 0), 1.0, MIN_RUN_CPU_CALLS - 1, (5, 5))
    assert run_dram_figure([few], plan, [True, False]) is None
    fixed_bound = RunResult(8, 1.0, 1.0, 100, 5.0, (0, 0, 0), (0, 200, 0), 0.6, 4000, (100, 100))
    assert run_dram_figure([fixed_bound], plan, [True, False]) is None  # the call costs explain most of it


def test_mean_std() -> None:
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5), "n": 2}
    assert mean_std([5.0])["std"] == 0.0 and mean_std([])["n"] == 0
