"""The planner on faked machines with the tiny Mixtral GGUF: budget arithmetic, overrides, no weight loading."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_moe.hardware import GIB, HardwareInfo
from edge_moe.microbench import MachineMeasurements
from edge_moe.planner import Plan, PlanOverrides, format_plan, make_plan, synthetic_routing
from edge_moe.profiles import HardwareProfile, load_profiles, select_profile
from tests.fake_machines import MACHINES


@pytest.fixture(scope="module")
def model(tiny_gguf: Callable[[str, str], Path]) -> Path:
    return tiny_gguf("mixtral", "q8_0")


def machine(name: str, tmp_path: Path) -> tuple[HardwareInfo, HardwareProfile]:
    hw = MACHINES[name]().detect(tmp_path)
    return hw, select_profile(hw, load_profiles(), override_path=tmp_path / "absent.toml").profile


def with_free_vram(hw: HardwareInfo, free: int) -> HardwareInfo:
    gpu = dataclasses.replace(hw.primary_gpu, free_vram_bytes=free)
    return dataclasses.replace(hw, gpus=(gpu,))


def used_vram(p: Plan) -> int:
    return p.expert_budget_bytes + p.dense_bytes + p.kv_bytes + p.workspace_bytes


def check_predictions(p: Plan) -> None:
    for v in (p.predicted_decode_tps, p.predicted_prefill_tps, p.no_cache_decode_tps):
        assert math.isfinite(v) and v > 0
    json.dumps(p.to_dict())  # serializable
    assert "decode" in format_plan(p)


def test_cpu_only_machine_has_no_cache(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("cpu_only", tmp_path)
    p = make_plan(model, hw, profile)
    assert p.device == "cpu" and p.cache is None and p.expert_budget_bytes == 0
    assert p.predicted_decode_tps == p.no_cache_decode_tps
    assert p.threads == 16
    check_predictions(p)


def test_laptop_cache_fits_free_vram_minus_margin(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    assert profile.name == "laptop-8gb"
    p = make_plan(model, hw, profile)
    assert p.device == "cuda" and p.cache is not None
    assert used_vram(p) <= hw.primary_gpu.free_vram_bytes - p.margin_bytes
    check_predictions(p)


def test_budget_lands_on_three_ways(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    big = make_plan(model, hw, profile)  # the fixed costs at the default context
    free = big.margin_bytes + big.dense_bytes + big.kv_bytes + big.workspace_bytes + int(6.5 * big.slot_bytes)
    p = make_plan(model, with_free_vram(hw, free), profile, overrides=PlanOverrides(admission="all"))
    assert p.n_ctx == big.n_ctx
    assert (p.cache.n_sets, p.cache.n_ways) == (2, 3)
    assert p.expert_budget_bytes == 6 * p.slot_bytes
    assert used_vram(p) <= free - p.margin_bytes


def test_huge_vram_caches_every_expert(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("h100_box", tmp_path)
    p = make_plan(model, hw, profile, overrides=PlanOverrides(admission="all"))
    assert p.cache.n_ways == 8  # n_expert of the tiny model
    assert p.predicted_decode_tps > p.no_cache_decode_tps
    check_predictions(p)


def test_context_reduced_when_vram_is_short(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    big = make_plan(model, hw, profile)
    per_ctx = big.kv_bytes // big.n_ctx + 512 * 4 * 2  # KV + a chunk's attention scores per context token
    fixed = big.dense_bytes + big.workspace_bytes - 512 * 4 * 2 * big.n_ctx
    free = big.margin_bytes + fixed + per_ctx * 1024 + 100
    p = make_plan(model, with_free_vram(hw, free), profile)
    assert p.n_ctx == 1024 < big.n_ctx
    assert p.cache is None  # nothing left for a slot
    assert any("context reduced" in n for n in p.notes)
    assert used_vram(p) <= free - p.margin_bytes


def test_dense_goes_to_cpu_when_vram_cannot_hold_it(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    p = make_plan(model, with_free_vram(hw, profile.defaults.vram_margin_gib * GIB + 1000), profile)
    assert p.device == "cpu" and p.cache is None
    check_predictions(p)


def test_explicit_overrides_win(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    o = PlanOverrides(threads=3, n_ctx=100_000, n_sets=1, n_ways=2, policy="LFU", quota=1, admission="reuse")
    p = make_plan(model, hw, profile, overrides=o)
    assert p.threads == 3 and p.n_ctx == 100_000
    assert (p.cache.n_sets, p.cache.n_ways, p.cache.replace.value) == (1, 2, "LFU")
    assert p.admission == "reuse" and p.quota == 1
    assert sum("your flag" in n for n in p.notes) >= 5
    budget = make_plan(model, hw, profile, overrides=PlanOverrides(gpu_budget_gib=0.0005))
    fits = int(0.0005 * GIB) // budget.slot_bytes
    assert fits > 0
    # from_budget: equal ways in every set, so at most what fits, at least one slot per set
    assert budget.cache.n_slots <= fits and budget.cache.n_slots > fits - budget.cache.n_sets
    cpu = make_plan(model, hw, profile, overrides=PlanOverrides(device="cpu"))
    assert cpu.device == "cpu" and cpu.cache is None


def test_measurements_and_routing_are_used(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    m = MachineMeasurements(30.0, 10.0, 200.0, threads=4, measured_at="2026-11-23T00:00:00+00:00",
                            machine_key="k")
    skewed = np.tile(np.array([0, 1]), (64, 2, 1))  # always experts 0 and 1
    p = make_plan(model, hw, profile, m, routing=skewed, overrides=PlanOverrides(n_ways=2))
    assert p.figures_source == "measured" and p.dram_gbps == 30.0
    assert p.hit_rate > 0.9 and "trace" in p.routing_source
    with pytest.raises(ValueError):
        make_plan(model, hw, profile, routing=np.zeros((4, 3, 2), np.int64))


def test_plan_loads_no_weights(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_moe.dense_weights as dw
    import edge_moe.gpu_experts as ge

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the planner must not load weights")

    monkeypatch.setattr(dw, "load_dense_weights", boom)
    monkeypatch.setattr(dw, "tensor_to_numpy", boom)
    monkeypatch.setattr(ge, "expert_bytes_view", boom)
    hw, profile = machine("laptop_4060", tmp_path)
    check_predictions(make_plan(model, hw, profile))


def test_overrides_validated() -> None:
    for bad in ({"threads": 0}, {"device": "tpu"}, {"admission": "some"}, {"policy": "MRU"}, {"quota": -1}):
        with pytest.raises(ValueError):
            PlanOverrides(**bad)


def test_synthetic_routing_is_distinct_and_seeded() -> None:
    r = synthetic_routing(16, 3, 8, 2)
    assert r.shape == (16, 3, 2) and (r[..., 0] != r[..., 1]).all()
    assert (r == synthetic_routing(16, 3, 8, 2)).all()


# ---- --vram-budget: one total for everything edge-moe puts on the GPU ---------------------------


def test_vram_budget_bounds_everything(model: Path, tmp_path: Path) -> None:
    from edge_moe.planner import RUNTIME_RESERVE_BYTES

    hw, profile = machine("h100_box", tmp_path)
    ref = make_plan(model, hw, profile, overrides=PlanOverrides(n_ctx=640, admission="all"))
    fixed = ref.dense_bytes + ref.kv_bytes + ref.workspace_bytes + RUNTIME_RESERVE_BYTES
    budget = fixed + int(4.5 * ref.slot_bytes)  # room for 4 slots: 2 layers x 2 ways
    p = make_plan(model, hw, profile,
                  overrides=PlanOverrides(n_ctx=640, admission="all", vram_budget_gib=budget / GIB))
    assert p.device == "cuda" and (p.cache.n_sets, p.cache.n_ways) == (2, 2)
    assert p.planned_vram_bytes <= budget < p.planned_vram_bytes + p.slot_bytes
    assert p.vram_budget_bytes == int(budget / GIB * GIB)
    assert any("VRAM budget" in n for n in p.notes)
    assert "VRAM budget" in format_plan(p)
    # without the budget the same machine caches every expert
    assert ref.cache.n_ways == 8 and ref.planned_vram_bytes > budget


def test_vram_budget_without_room_for_slots_has_no_cache(model: Path, tmp_path: Path) -> None:
    from edge_moe.planner import RUNTIME_RESERVE_BYTES

    hw, profile = machine("h100_box", tmp_path)
    ref = make_plan(model, hw, profile, overrides=PlanOverrides(n_ctx=640))
    budget = ref.dense_bytes + ref.kv_bytes + ref.workspace_bytes + RUNTIME_RESERVE_BYTES + ref.slot_bytes // 2
    p = make_plan(model, hw, profile, overrides=PlanOverrides(n_ctx=640, vram_budget_gib=budget / GIB))
    assert p.device == "cuda" and p.cache is None and p.planned_vram_bytes <= budget


def test_vram_budget_smaller_than_dense_puts_everything_on_cpu(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("h100_box", tmp_path)
    p = make_plan(model, hw, profile, overrides=PlanOverrides(vram_budget_gib=0.01))
    assert p.device == "cpu" and p.cache is None and p.planned_vram_bytes == 0


def test_vram_budget_is_capped_by_free_vram(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("laptop_4060", tmp_path)
    free = make_plan(model, hw, profile, overrides=PlanOverrides(n_ctx=640, admission="all"))
    huge = make_plan(model, hw, profile, overrides=PlanOverrides(n_ctx=640, admission="all", vram_budget_gib=512))
    assert huge.expert_budget_bytes == free.expert_budget_bytes
    assert any("capped by free VRAM" in n for n in huge.notes)


@pytest.mark.parametrize("bad", [{"vram_budget_gib": 0}, {"vram_budget_gib": -1.0},
                                 {"vram_budget_gib": float("nan")},
                                 {"vram_budget_gib": 6.0, "gpu_budget_gib": 2.0},
                                 {"vram_budget_gib": 6.0, "device": "cpu"}])
def test_vram_budget_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        PlanOverrides(**bad)


# ---- the per-layer cost model (edge_moe/cost_model.py) in the plan -------------------------------


def test_cpu_device_prediction_by_hand(model: Path, tmp_path: Path) -> None:
    from edge_moe import cost_model as cm
    from edge_moe.planner import _model_sizes

    hw, profile = machine("cpu_only", tmp_path)
    m = MachineMeasurements(30.0, None, None, threads=16, measured_at="t", machine_key="k")  # no call figure
    p = make_plan(model, hw, profile, m)
    s = _model_sizes(model)
    # dense weights from DRAM, then per layer: the loop's estimate + one ggml call + k experts' bytes
    per_layer = cm.CPU_DEVICE_LAYER_S + cm.CPU_CALL_FIXED_S + s.k * s.expert_bytes / 30e9
    assert 1 / p.no_cache_decode_tps == pytest.approx(p.dense_bytes / 30e9 + s.n_layer * per_layer)
    assert any("ggml call 25 us fixed: cost_model" in n for n in p.notes)
    # a measured call cost replaces the constant: exactly (500 - 25) us more per layer
    slow = dataclasses.replace(m, cpu_call_us=500.0)
    q = make_plan(model, hw, profile, slow)
    assert 1 / q.no_cache_decode_tps - 1 / p.no_cache_decode_tps == pytest.approx(s.n_layer * 475e-6)
    assert any("ggml call 500 us fixed: measured" in n for n in q.notes)
    assert p.cpu_call_seconds == pytest.approx(25e-6) and q.cpu_call_seconds == pytest.approx(500e-6)


@pytest.mark.parametrize("policy,warned", [("PASSIVE", True), (" passive", True), ("ACTIVE", False), (None, False)])
def test_plan_warns_about_a_passive_openmp_wait_policy(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       policy: str | None, warned: bool) -> None:
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    hw, profile = machine("cpu_only", tmp_path)
    p = make_plan(model, hw, profile)
    assert any("OMP_WAIT_POLICY=PASSIVE" in n for n in p.notes) == warned


def test_full_cache_is_priced_as_one_graph(model: Path, tmp_path: Path) -> None:
    from edge_moe import cost_model as cm
    from edge_moe.planner import _figures, _model_sizes

    hw, profile = machine("h100_box", tmp_path)
    m = MachineMeasurements(40.0, 50.0, 2000.0, threads=16, measured_at="t", machine_key="k", cpu_call_us=30.0)
    p = make_plan(model, hw, profile, m, overrides=PlanOverrides(admission="all"))
    s = _model_sizes(model)
    assert (p.cache.n_sets, p.cache.n_ways) == (s.n_layer, s.n_expert)
    fig = _figures(s, p.dense_bytes, 40.0, 50.0, 2000.0, 30e-6, True)
    assert p.predicted_decode_tps == pytest.approx(1 / fig.resident_token_seconds)
    assert any("one CUDA graph" in n for n in p.notes)
    # no cache: every layer pays its loop (no lookups: an uncached layer), one ggml call and k misses
    assert 1 / p.no_cache_decode_tps == pytest.approx(fig.no_cache_seconds(s.n_layer, s.k, s.expert_bytes))
    per_layer = fig.uncached_layer_seconds + 30e-6 + s.k * s.expert_bytes / (40e9 * cm.REPACK_DRAM_GAIN)
    assert 1 / p.no_cache_decode_tps == pytest.approx(fig.base_token_seconds + s.n_layer * per_layer)


def test_planner_weighs_pinned_layers(model: Path, tmp_path: Path) -> None:
    """Room for 12 slots in a 2-layer x 8-expert model: one whole layer can be pinned. Both
    placements are simulated and the faster is kept (uniform routing: their hit rates match,
    the pinned layer saves its host round trip)."""
    hw, profile = machine("laptop_4060", tmp_path)
    big = make_plan(model, hw, profile)
    free = big.margin_bytes + big.dense_bytes + big.kv_bytes + big.workspace_bytes + int(12.5 * big.slot_bytes)
    p = make_plan(model, with_free_vram(hw, free), profile, overrides=PlanOverrides(admission="all"))
    chosen = next(n for n in p.notes if "simulated tok/s" in n)
    assert "last 1 layers pinned, cache 1 sets x 4 ways for the others" in chosen  # P = 1 was simulated
    assert "last 1 layers pinned, no other slots" in chosen  # P = 1 leaving 4 slots unused
    assert "cache 2 sets x 6 ways all" in chosen  # and P = 0
    assert p.cache.pinned_layers == 1, chosen
    assert p.expert_budget_bytes == p.cache.total_slots(8) * p.slot_bytes and used_vram(p) <= free - p.margin_bytes
    assert p.to_dict()["cache"]["pinned_layers"] == 1 and "pinned" in format_plan(p)


def test_pinned_layers_flag_wins(model: Path, tmp_path: Path) -> None:
    hw, profile = machine("h100_box", tmp_path)
    p = make_plan(model, hw, profile, overrides=PlanOverrides(pinned_layers=1, gpu_budget_gib=0.0005))
    assert p.cache.pinned_layers == 1 and any("--pinned-layers" in n for n in p.notes)
    assert p.expert_budget_bytes == p.cache.total_slots(8) * p.slot_bytes
    only = make_plan(model, hw, profile, overrides=PlanOverrides(pinned_layers=2))
    assert only.cache.pinned_layers == 2 and only.cache.n_sets == 0
    with pytest.raises(ValueError, match="3 pinned layers, but the model has 2"):
        make_plan(model, hw, profile, overrides=PlanOverrides(pinned_layers=3))
    with pytest.raises(ValueError, match="pinned_layers"):
        PlanOverrides(pinned_layers=-1)
    # every layer pinned is every expert cached: priced as the one-graph token, as 2 sets x 8 ways
    full = make_plan(model, hw, profile, overrides=PlanOverrides(n_sets=2, n_ways=8))
    assert only.predicted_decode_tps == pytest.approx(full.predicted_decode_tps)


def test_plan_prices_misses_at_the_models_expert_shape(model: Path, tmp_path: Path) -> None:
    """A DRAM figure measured at this model's expert shape wins over the default shape's."""
    from edge_moe.microbench import expert_shape_key
    from edge_moe.planner import _model_sizes

    hw, profile = machine("laptop_4060", tmp_path)
    s = _model_sizes(model)
    plain = MachineMeasurements(30.0, 10.0, 200.0, threads=4, measured_at="t", machine_key="k")
    shaped = MachineMeasurements(30.0, 10.0, 200.0, threads=4, measured_at="t", machine_key="k",
                                 expert_dram_gbps={expert_shape_key(s.n_embd, s.n_ff, s.k): 45.0,
                                                   expert_shape_key(s.n_embd, s.n_ff, s.k + 1): 5.0})
    p_plain, p_shaped = (make_plan(model, hw, profile, m) for m in (plain, shaped))
    assert p_plain.dram_gbps == 30.0 and p_shaped.dram_gbps == 45.0
    assert any("this model's" in n for n in p_shaped.notes)
    assert p_shaped.no_cache_decode_tps > p_plain.no_cache_decode_tps
    # a figure from an earlier run's decode steps wins over both, and the plan says so
    ran = dataclasses.replace(shaped, run_dram_gbps={expert_shape_key(s.n_embd, s.n_ff, s.k): 36.0})
    p_ran = make_plan(model, hw, profile, ran)
    assert p_ran.dram_gbps == 36.0
    assert any("earlier run's decode steps" in n and "micro-benchmark: 45 GB/s" in n for n in p_ran.notes)
    assert p_plain.no_cache_decode_tps < p_ran.no_cache_decode_tps < p_shaped.no_cache_decode_tps


def test_decode_streaming_follows_the_cost_model(model: Path, tmp_path: Path) -> None:
    """The tiny model's experts cost the CPU less than a streamed copy costs the host: nothing is
    streamed. With a CPU path a thousand times slower the same plan streams misses, and the
    executor's config carries the rule."""
    hw, profile = machine("laptop_4060", tmp_path)

    def measured(dram_gbps: float) -> MachineMeasurements:
        return MachineMeasurements(dram_gbps, 10.0, 200.0, threads=4, measured_at="2026-11-23T00:00:00+00:00",
                                   machine_key="k")

    p = make_plan(model, hw, profile, measured(30.0), overrides=PlanOverrides(n_ways=2))
    assert p.cache is not None and p.decode_stream is None
    assert p.gpu_experts_config().decode_stream is None
    slow = make_plan(model, hw, profile, measured(0.03), overrides=PlanOverrides(n_ways=2))
    assert slow.decode_stream is not None and slow.decode_stream[0] == 0 and slow.decode_stream[1] == 1
    assert any(n.startswith("decode streaming") for n in slow.notes)
    assert slow.gpu_experts_config().decode_stream == slow.decode_stream
    assert json.loads(json.dumps(slow.to_dict()))["decode_stream"] == list(slow.decode_stream)
