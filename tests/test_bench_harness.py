"""The llama.cpp side of the benchmark (placement arithmetic, llama-bench driver) and the report writer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import bench_report, llama_bench_runner as lbr
from edge_moe.bench import BenchConfig, run_bench
from edge_moe.gguf_file import GGUFFile

REPO = Path(__file__).resolve().parents[1]
LLAMA_BENCH = Path(os.environ.get("EDGE_MOE_LLAMA_BENCH", REPO / ".carry" / "build_local" / "bin" / "llama-bench"))


@pytest.fixture(scope="module")
def model(tiny_gguf: Callable[[str, str], Path]) -> Path:
    return tiny_gguf("mixtral", "q8_0")


def test_placement_takes_the_most_expert_layers_that_fit() -> None:
    layers = [10, 10, 10, 10]
    assert lbr.choose_n_cpu_moe(45, 5, layers).n_cpu_moe == 0  # everything fits exactly
    p = lbr.choose_n_cpu_moe(44, 5, layers)
    assert (p.n_cpu_moe, p.expert_layers_on_gpu, p.predicted_bytes) == (1, 3, 35)
    assert lbr.choose_n_cpu_moe(14, 5, layers).n_cpu_moe == 4  # only the dense part fits: every expert on the host
    assert lbr.choose_n_cpu_moe(15, 5, layers).n_cpu_moe == 3
    none = lbr.choose_n_cpu_moe(4, 5, layers)
    assert none.n_cpu_moe is None and none.expert_layers_on_gpu == 0


def test_sizes_from_the_gguf(model: Path) -> None:
    per_layer = lbr.expert_bytes_per_layer(model)
    with GGUFFile(model) as g:
        exps = sum(t.nbytes for n, t in g.tensors.items() if "_exps." in n)
        dense = sum(t.nbytes for n, t in g.tensors.items() if "_exps." not in n and n != "token_embd.weight")
    assert len(per_layer) == 2 and sum(per_layer) == exps and per_layer[0] == per_layer[1]
    base = lbr.estimate_base_bytes(model, n_ctx=640, context_bytes=0)
    assert base > dense  # + KV + a ubatch of logits
    assert lbr.estimate_base_bytes(model, n_ctx=1280, context_bytes=0) > base  # KV grows with the context


@pytest.mark.skipif(not LLAMA_BENCH.is_file(), reason=f"no llama-bench at {LLAMA_BENCH} (EDGE_MOE_LLAMA_BENCH)")
def test_llama_bench_driver_on_the_cpu(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "llama_tiny.json"
    args = ["--llama-bench", str(LLAMA_BENCH), "--model", str(model), "--threads", "2", "--reps", "2", "--ngl", "0",
            "-p", "16", "-n", "4", "--label", "tiny", "--out", str(out)]
    assert lbr.main(args + ["--budgets", "6"]) == 0
    assert lbr.main(args + ["--budgets", "12"]) == 0  # resumable: the second call keeps the first's rows
    r = json.loads(out.read_text())
    assert set(r["budgets"]) == {"6", "12"}
    row = r["budgets"]["6"]
    assert row["decode_tps"]["mean"] > 0 and row["prefill_tps"]["mean"] > 0 and row["decode_tps"]["n"] == 2
    assert row["llama_bench"]["tg"]["n_depth"] == 16 and row["llama_bench"]["tg"]["n_gen"] == 4
    assert row["llama_bench"]["pp"]["n_prompt"] == 16 and row["peak_vram_bytes"] is None


def test_llama_driver_bad_input(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        lbr.main(["--llama-bench", str(tmp_path / "nope"), "--model", str(model), "--out", str(tmp_path / "o.json")])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lbr.main(["--llama-bench", str(model), "--model", str(model), "--budgets", "6,-1", "--out", "x"])
    assert "--budgets" in capsys.readouterr().err


def test_report_puts_both_sides_and_the_prediction_together(model: Path, tmp_path: Path) -> None:
    edge = run_bench(BenchConfig(model=model, prompt_tokens=4, gen_tokens=2, repeats=2, threads=2, device="cpu",
                                 label="tiny", gpu_budget_gib=6.0, profile_tokens=1))
    edge["summary"]["decode_tps"] = {"mean": 10.0, "std": 1.0, "n": 2}
    edge["summary"]["prefill_tps"] = {"mean": 300.0, "std": 0.0, "n": 2}
    edge["plan"]["predicted_decode_tps"] = 11.5
    edge["cpu_in_situ"] = {"gbps": {"mean": 40.0, "std": 1.0, "n": 2}, "planned_gbps": {"mean": 50.0, "std": 0.0, "n": 2},
                           "predicted_decode_tps_at_in_situ": {"mean": 9.5, "std": 0.1, "n": 2}}
    replay = json.loads(json.dumps(edge))
    replay["config"]["routing"] = "replay"
    replay["plan"]["predicted_decode_tps_on_trace"] = 9.0
    llama = {"engine": "llama.cpp", "label": "tiny", "budgets": {"6": {
        "n_cpu_moe": 3, "peak_vram_bytes": 5 * 2**30, "decode_tps": {"mean": 20.0, "std": 2.0},
        "prefill_tps": {"mean": 600.0, "std": 0.0}}}}
    (tmp_path / "edge_tiny_6_natural.json").write_text(json.dumps(edge))
    (tmp_path / "edge_tiny_6_replay.json").write_text(json.dumps(replay))
    (tmp_path / "llama_tiny.json").write_text(json.dumps(llama))
    assert bench_report.main([str(tmp_path)]) == 0
    rows = {r["routing"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    nat = rows["natural"]
    assert nat["decode_ratio"][0] == pytest.approx(0.5)
    assert nat["decode_ratio"][1] == pytest.approx(0.5 * (0.1**2 + 0.1**2) ** 0.5)
    assert nat["prefill_ratio"] == pytest.approx([0.5, 0.0])
    assert nat["prediction_accuracy"] == pytest.approx(1.15) and rows["replay"]["prediction_accuracy"] == 0.9
    assert nat["llama_ncmoe"] == 3 and nat["llama_vram_gib"] == 5.0
    assert nat["accuracy_at_in_situ"] == pytest.approx(0.95) and nat["cpu_gbps"] == 40.0
    md = (tmp_path / "results.md").read_text()
    assert "**0.50 ± 0.07**" in md and "does not depend on routing" in md and "| **all** |" in md
    assert "| 40.0 / 50.0 | 0.95 |" in md


def test_report_without_llama_row_and_bad_folder(model: Path, tmp_path: Path) -> None:
    edge = run_bench(BenchConfig(model=model, prompt_tokens=4, gen_tokens=2, repeats=1, threads=2, device="cpu",
                                 profile_tokens=0))
    row = bench_report.edge_row(edge, {})
    assert row.decode_ratio is None and row.llama_decode is None
    assert "| - |" in bench_report.markdown([row])
    with pytest.raises(SystemExit):
        bench_report.main([str(tmp_path / "absent")])
