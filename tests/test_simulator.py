"""The cache simulator: hand-traced replays per policy, byte and time accounting, admission, CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_moe.cache_admission import AdmissionConfig
from edge_moe.expert_cache import CacheConfig
from edge_moe.simulator import MachineFigures, admission_config, format_report, simulate

SHARED_TRACE = Path(__file__).parent / "data" / "mixtral-8x7b-instruct-humaneval.npz"
# 1 MB experts, 1 GB/s DRAM and PCIe: a CPU miss or a fill costs 1 ms, a GPU hit 0.1 ms
SLOW = MachineFigures(dram_gbps=1.0, pcie_gbps=1.0, gpu_expert_seconds=1e-4, base_token_seconds=1e-3)
MB = 1_000_000


def one_layer(seq: list[int]) -> np.ndarray:
    """[tokens, 1 layer, k=1] from a sequence of expert ids."""
    return np.array(seq, dtype=np.int64).reshape(-1, 1, 1)


def run(trace: np.ndarray, ways: int, policy: str = "LRU", admission: AdmissionConfig | None = None,
        seed: int = 0, machine: MachineFigures = SLOW):
    config = CacheConfig(1, ways, policy, admission if admission is not None else AdmissionConfig(), seed)
    return simulate(trace, config, MB, 4, machine)


def counts(r) -> tuple[int, int, int, int]:
    return r.hits, r.misses, r.fills, r.evictions


# S1 separates FIFO from LRU/LFU; S2 separates LFU from LRU/FIFO. 1 layer, 4 experts, 2 ways.
S1 = [0, 1, 0, 2, 0, 1, 3, 1, 0]
S2 = [0, 0, 0, 1, 2, 1, 2]


def test_lru_by_hand() -> None:
    # S1: fill 0, fill 1, hit 0, 2 evicts 1 (0 used later), hit 0, 1 evicts 2, 3 evicts 0,
    #     hit 1, 0 evicts 3 (1 used at t8) -> 3 hits, 6 misses, 6 fills, 4 evictions
    assert counts(run(one_layer(S1), 2, "LRU")) == (3, 6, 6, 4)
    # S2: fill 0, hit, hit, fill 1 (empty way), 2 evicts 0 (last used t3 < t4), hit 1, hit 2
    assert counts(run(one_layer(S2), 2, "LRU")) == (4, 3, 3, 1)


def test_fifo_by_hand() -> None:
    # S1: fill 0, fill 1, hit 0, 2 evicts 0 (filled first), 0 evicts 1, 1 evicts 2, 3 evicts 0,
    #     hit 1, 0 evicts 1 -> 2 hits, 7 misses, 7 fills, 5 evictions
    assert counts(run(one_layer(S1), 2, "FIFO")) == (2, 7, 7, 5)
    # S2: as LRU: 2 evicts 0, the earlier fill
    assert counts(run(one_layer(S2), 2, "FIFO")) == (4, 3, 3, 1)


def test_lfu_by_hand() -> None:
    # S1 (uses count the fill as one): fill 0 (1), fill 1 (1), hit 0 (2), 2 evicts 1, hit 0 (3),
    #     1 evicts 2, 3 evicts 1, 1 evicts 3, hit 0 -> 3 hits, 6 misses, 6 fills, 4 evictions
    assert counts(run(one_layer(S1), 2, "LFU")) == (3, 6, 6, 4)
    # S2: 0 reaches 3 uses and stays; 1 and 2 (1 use each) keep evicting each other:
    #     fill 0, hit, hit, fill 1, 2 evicts 1, 1 evicts 2, 2 evicts 1 -> 2 hits, 5 misses
    assert counts(run(one_layer(S2), 2, "LFU")) == (2, 5, 5, 3)


@pytest.mark.parametrize("policy", ["LRU", "FIFO", "LFU", "random"])
def test_hits_are_pinned_while_the_layer_admits(policy: str) -> None:
    # k=2, 2 ways: when one expert of a token hits, its slot is pinned, so the miss can only
    # take the other way -- whatever the policy, random included (one candidate).
    # t1 [0,1]: 2 fills; t2 [0,2]: hit 0, 2 evicts 1; t3 [2,3]: hit 2, 3 evicts 0;
    # t4 [3,0]: hit 3, 0 evicts 2 -> 3 hits, 5 misses, 5 fills, 3 evictions
    trace = np.array([[0, 1], [0, 2], [2, 3], [3, 0]]).reshape(4, 1, 2)
    for seed in range(5):
        r = run(trace, 2, policy, seed=seed)
        assert counts(r) == (3, 5, 5, 3)
        assert r.blocked == 0


def test_random_follows_its_seeded_generator() -> None:
    # [0, 1, 2, 0]: 2 evicts way rng.choice([0, 1]) -- the cache's first draw from
    # random.Random(seed). Expert 0 sits in way 0, so the last lookup hits iff way 1 was drawn.
    outcomes = set()
    for seed in range(10):
        way = random.Random(seed).choice([0, 1])
        r = run(one_layer([0, 1, 2, 0]), 2, "random", seed=seed)
        assert r.hits == (1 if way == 1 else 0)
        outcomes.add(way)
    assert outcomes == {0, 1}  # both branches were exercised


def test_random_is_reproducible_and_consistent() -> None:
    rng = np.random.default_rng(0)
    trace = rng.integers(0, 4, size=(200, 3, 2))
    trace[:, :, 1] = (trace[:, :, 0] + 1 + rng.integers(0, 3, size=(200, 3))) % 4  # distinct top-2
    config = CacheConfig(3, 2, "random", seed=7)
    a = simulate(trace, config, MB, 4, SLOW)
    assert a.to_dict() == simulate(trace, config, MB, 4, SLOW).to_dict()
    assert a.hits + a.misses == 200 * 3 * 2
    assert a.fills == a.misses  # admit-all, distinct top-2, never blocked with 2 ways
    assert a.fills - a.evictions == 3 * 2  # every way filled once, then only replaced


def test_bytes_and_time_by_hand() -> None:
    # 1 MB experts, DRAM 1 GB/s, PCIe 0.25 GB/s, GPU hit 0.1 ms, base 1 ms, no per-layer costs.
    # Trace [0, 0]. t1: miss + fill: the layer's CPU call 1 MB / 1 GB/s = 1 ms -> serial 1 + 1 = 2 ms;
    # the fill's copy overlaps the loop, but its 1 MB / 0.25 GB/s = 4 ms of PCIe bound the token -> 4 ms
    # (the bandwidth-only model charged 1 + 4 = 5 ms: it added the copy to the base).
    # t2: hit: GPU 0.1 ms -> 1.1 ms. Mean 2.55 ms.
    machine = MachineFigures(1.0, 0.25, 1e-4, 1e-3)
    r = run(one_layer([0, 0]), 2, machine=machine)
    assert counts(r) == (1, 1, 1, 0)
    assert r.dram_bytes_per_token == pytest.approx(1e6)  # (1 miss + 1 fill) MB over 2 tokens
    assert r.pcie_bytes_per_token == pytest.approx(0.5e6)
    assert r.cpu_miss_bytes_per_token == pytest.approx(0.5e6)
    assert r.seconds_per_token == pytest.approx(2.55e-3)
    assert r.tokens_per_second == pytest.approx(1 / 2.55e-3)
    assert r.cpu_calls_per_token == pytest.approx(0.5) and r.resident_tokens == 0
    # no cache: one 1 ms CPU miss per token + 1 ms base
    assert r.baseline_seconds_per_token == pytest.approx(2e-3)
    assert r.baseline_tokens_per_second == pytest.approx(500.0)
    # a slow GPU becomes the bound of the hit token: t2 = 1 + 10 ms; t1 stays 4 ms
    slow_gpu = MachineFigures(1.0, 0.25, 1e-2, 1e-3)
    assert run(one_layer([0, 0]), 2, machine=slow_gpu).seconds_per_token == pytest.approx(7.5e-3)


# per layer: 0.2 ms fixed, a ggml call 0.5 ms + 1 ms per 1 MB miss, hits 0.03 ms + 0.1 ms each,
# 0.1 ms to issue a fill; base 1 ms per token
LAYERED = MachineFigures(dram_gbps=1.0, pcie_gbps=1.0, gpu_expert_seconds=1e-4, base_token_seconds=1e-3,
                         layer_seconds=2e-4, cpu_call_seconds=5e-4, gpu_layer_seconds=3e-5,
                         fill_issue_seconds=1e-4)


def test_token_is_a_sum_over_layers_by_hand() -> None:
    # layer 0: 2 hits -> 0.2 + max(0, 0.03 + 2 x 0.1) = 0.43 ms
    # layer 1: 1 miss, 1 fill -> 0.2 + max(0.5 + 1, 0) + 0.1 = 1.8 ms
    # serial 1 + 0.43 + 1.8 = 3.23 ms > PCIe 1 MB / 1 GB/s = 1 ms and DRAM (1 + 1) MB = 2 ms
    # (one max over the whole token would say 1 + max(GPU 0.2, CPU 2, PCIe 1) = 3 ms)
    assert LAYERED.token_seconds([(2, 0, 0), (0, 1, 1)], MB) == pytest.approx(3.23e-3)
    # the same misses in one layer pay one ggml call, in two layers two: exactly 0.5 ms apart
    one_call = LAYERED.token_seconds([(0, 2, 0), (0, 0, 0)], MB)
    two_calls = LAYERED.token_seconds([(0, 1, 0), (0, 1, 0)], MB)
    assert one_call == pytest.approx(1e-3 + 0.2e-3 + (0.5e-3 + 2e-3) + 0.2e-3)  # 3.9 ms
    assert two_calls - one_call == pytest.approx(5e-4)
    # a layer without a miss or a hit costs its fixed part only
    assert LAYERED.layer_time(0, 0, 0, MB) == pytest.approx(2e-4)
    # many fills: their PCIe bytes (5 x 1 ms) exceed the loop (1 + 0.2 + 1.5 + 5 x 0.1 = 3.2 ms)
    assert LAYERED.token_seconds([(0, 1, 5)], MB) == pytest.approx(6e-3)  # DRAM (1 + 5) MB: 6 ms
    # a one-graph token where the figures have one, else the per-layer sum
    resident = dataclasses.replace(LAYERED, resident_token_seconds=7e-4)
    assert resident.token_seconds([(2, 0, 0)] * 3, MB, resident=True) == pytest.approx(7e-4)
    assert LAYERED.token_seconds([(2, 0, 0)], MB, resident=True) == pytest.approx(1.43e-3)


def test_two_layer_replay_by_hand() -> None:
    # 2 sets x 1 way, LRU, admit all; k=1. t1: layer 0 misses 0 (fill), layer 1 misses 1 (fill);
    # t2: layer 0 hits 0, layer 1 misses 2 (fill, evicts 1).
    # t1: 2 x (0.2 + 0.5 + 1 + 0.1) + 1 = 4.6 ms (> PCIe 2 ms, DRAM 4 ms)
    # t2: layer 0 0.2 + 0.03 + 0.1 = 0.33, layer 1 1.8 -> 1 + 2.13 = 3.13 ms. Mean 3.865 ms.
    trace = np.array([[[0], [1]], [[0], [2]]])
    r = simulate(trace, CacheConfig(2, 1), MB, 4, LAYERED)
    assert counts(r) == (1, 3, 3, 1)
    assert r.seconds_per_token == pytest.approx(3.865e-3)
    assert r.cpu_calls_per_token == pytest.approx(1.5)  # 3 layers of 4 had a miss
    # no cache: 1 + 2 x (0.2 + 0.5 + 1) = 4.4 ms
    assert r.baseline_seconds_per_token == pytest.approx(4.4e-3)


def test_tokens_with_every_expert_cached_are_one_graph() -> None:
    # 1 layer, 2 experts, 2 ways, k=2: t1 fills both; t2, t3 start with every expert cached
    # t1: serial 1 + 0.2 + (0.5 + 2) + 2 x 0.1 = 3.9 ms, but DRAM (2 misses + 2 fills) x 1 ms = 4 ms
    # bounds it; t2, t3: 0.7 ms each -> mean 5.4 / 3 ms
    machine = dataclasses.replace(LAYERED, resident_token_seconds=7e-4)
    trace = np.array([[0, 1], [0, 1], [1, 0]]).reshape(3, 1, 2)
    r = simulate(trace, CacheConfig(1, 2), MB, 2, machine)
    assert r.resident_tokens == 2 and r.hits == 4
    assert r.seconds_per_token == pytest.approx(5.4e-3 / 3)
    # without a one-graph figure they are per-layer tokens: 1 + 0.2 + 0.03 + 0.2 = 1.43 ms
    assert simulate(trace, CacheConfig(1, 2), MB, 2, LAYERED).seconds_per_token == pytest.approx(
        (4e-3 + 2 * 1.43e-3) / 3)


def test_decode_figures_follow_the_documented_constants() -> None:
    from edge_moe import cost_model as cm

    # the H100 all-GPU Qwen3 token: 48 layers x (18 kernels + 8 Q4_0 experts of 2.65 MB) at a
    # 2.73 TB/s fp16 GEMV; one layer's experts took 18.5 us in session 14's kernel sweep, a whole
    # token 2.645 ms end to end (378 tok/s, session 14 call F); Mixtral's 2 experts of 99 MB 80.5 us
    qwen3 = cm.resident_seconds(48, 8, 2_654_208, 2730.0, 0.0)
    experts = 48 * (cm.EXPERT_KERNELS_FIXED_S + 8 * 2_654_208 / (cm.Q4_0_GEMV_FRACTION * 2730e9))
    assert qwen3 == pytest.approx(48 * cm.KERNELS_PER_LAYER * cm.PER_KERNEL_S + experts)
    assert experts == pytest.approx(48 * 18.5e-6, rel=0.05) and qwen3 == pytest.approx(2.645e-3, rel=0.10)
    mixtral_experts = cm.EXPERT_KERNELS_FIXED_S + 2 * 99_090_432 / (cm.Q4_0_GEMV_FRACTION * 2730e9)
    assert mixtral_experts == pytest.approx(80.5e-6, rel=0.05)
    f = cm.decode_figures(n_layer=48, k=8, slot_bytes=2_654_208, layer_dense_bytes=1e6, outside_dense_bytes=8.736e7,
                          dram_gbps=47.0, pcie_gbps=55.0, gpu_gemv_gbps=2730.0, all_cached=True)
    assert f.layer_seconds == pytest.approx(cm.LAYER_FRONT_S + cm.HOST_LOOKUP_S + cm.EXPERTS_LAUNCH_S + cm.JOIN_S)
    assert f.layer_seconds == pytest.approx(0.34e-3)
    assert f.cpu_call_seconds == cm.CPU_CALL_FIXED_S and f.fill_issue_seconds == cm.FILL_ISSUE_S
    assert f.base_token_seconds == pytest.approx(8.736e7 / (cm.Q4_0_GEMV_FRACTION * 2730e9))  # the LM head at the Q4_0 rate
    assert f.resident_token_seconds == pytest.approx(qwen3 + f.base_token_seconds)
    # a front whose dense bytes take longer than its kernels is bound by the bytes
    heavy = cm.decode_figures(n_layer=48, k=8, slot_bytes=2_654_208, layer_dense_bytes=1e9, outside_dense_bytes=0,
                              dram_gbps=47.0, pcie_gbps=55.0, gpu_gemv_gbps=2730.0)
    assert heavy.layer_seconds == pytest.approx(1e9 / (cm.Q4_0_GEMV_FRACTION * 2730e9) + cm.LAYER_HOST_S)
    assert heavy.resident_token_seconds is None
    # a layer no slot serves: its measured time beside the ggml call, or its dense bytes if longer
    assert f.uncached_layer_seconds == cm.UNCACHED_LAYER_S
    assert heavy.uncached_layer_seconds == pytest.approx(1e9 / (cm.Q4_0_GEMV_FRACTION * 2730e9))


def test_admission_all_quota_reuse_by_hand() -> None:
    # 1 layer, k=2, 4 ways (every expert fits): tokens [0,1] [0,1] [2,3] [0,1]
    trace = np.array([[0, 1], [0, 1], [2, 3], [0, 1]]).reshape(4, 1, 2)
    # admit all: t1 fills 0, 1; t2 hits both; t3 fills 2, 3; t4 hits both
    r = run(trace, 4, admission=admission_config("all", None, SLOW, MB))
    assert (r.hits, r.misses, r.fills, r.declined) == (4, 4, 4, 0)
    # quota 1 fill per token: t1 fills 0, declines 1; t2 hit 0, fills 1; t3 fills 2, declines 3;
    # t4 2 hits -> 3 hits, 5 misses, 3 fills, 2 declined
    r = run(trace, 4, admission=admission_config("all", 1, SLOW, MB))
    assert (r.hits, r.misses, r.fills, r.declined) == (3, 5, 3, 2)
    # quota 0: nothing is ever filled
    r = run(trace, 4, admission=admission_config("all", 0, SLOW, MB))
    assert (r.hits, r.misses, r.fills, r.declined) == (0, 8, 0, 8)
    # reuse (fill 1 ms, a hit saves 1 - 0.1 = 0.9 ms): admit when count x 0.9 > 1.
    # t1: counts 1 -> declined; t2: counts 0.9 + 1 = 1.9 -> 1.71 > 1, filled; t3: counts 1 -> declined;
    # t4: 2 hits
    r = run(trace, 4, admission=admission_config("reuse", None, SLOW, MB))
    assert (r.hits, r.misses, r.fills, r.declined) == (2, 6, 2, 4)


@pytest.mark.parametrize("problem", ["0", "1"])
def test_shared_trace_lru_four_ways(problem: str) -> None:
    experts = np.load(SHARED_TRACE)[f"experts_{problem}"].astype(np.int64)
    machine = MachineFigures(56.0, 55.0, 40e-6, 2e-3)
    r = simulate(experts, CacheConfig(32, 4), int(94.5 * 2**20), 8, machine)
    assert 0.57 <= r.hit_rate <= 0.63  # README: 0.57-0.61 measured, lookup-then-admit order
    assert len(r.hit_rate_by_layer) == 32
    assert r.declined == r.blocked == 0
    assert r.tokens_per_second > r.baseline_tokens_per_second
    assert "hit rate" in format_report(r)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="outside 0..3"):
        run(one_layer([0, -1]), 2)
    with pytest.raises(ValueError, match=r"\[tokens, layers, k\]"):
        simulate(np.zeros((3, 2), dtype=np.int64), CacheConfig(1, 1), MB, 4, SLOW)
    with pytest.raises(ValueError, match="cache-nways"):
        run(one_layer([0]), 5)
    with pytest.raises(ValueError, match="pcie_gbps"):
        MachineFigures(1.0, 0.0, 1e-4, 1e-3)
    with pytest.raises(ValueError, match="cpu_call_seconds"):
        MachineFigures(1.0, 1.0, 1e-4, 1e-3, cpu_call_seconds=-1e-6)
    with pytest.raises(ValueError, match="resident_token_seconds"):
        MachineFigures(1.0, 1.0, 1e-4, 1e-3, resident_token_seconds=0.0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_moe.simulate_cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_json() -> None:
    out = _cli(str(SHARED_TRACE), "--problem", "1", "--cache-nways", "4", "--cache-admission", "reuse", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tokens"] == 252 and result["n_layers"] == 32 and result["n_experts"] == 8
    assert result["admission"] == "reuse" and result["n_ways"] == 4
    assert 0.0 < result["hit_rate"] < 1.0


def test_cli_pinned_layers() -> None:
    """llama.cpp's placement of the shared trace at 12 GiB: the last 13 layers pinned, no sets."""
    out = _cli(str(SHARED_TRACE), "--pinned-layers", "13", "--cache-nblocks", "0", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["pinned_layers"] == 13 and r["n_sets"] == 0 and r["fills"] == 0
    assert r["hit_rate_by_layer"][19:] == [1.0] * 13 and r["hit_rate_by_layer"][:19] == [0.0] * 19
    assert r["tokens_per_second"] > r["baseline_tokens_per_second"]


def test_cli_bad_trace_path(tmp_path: Path) -> None:
    out = _cli(str(tmp_path / "missing.npz"))
    assert out.returncode == 2
    assert "no such trace file" in out.stderr and "Traceback" not in out.stderr


def test_pinned_layers_by_hand() -> None:
    # 3 layers, 4 experts, k=1; layer 2 pinned, layers 0-1 share 1 set of 1 way (LRU, admit all).
    # t1: layer 0 misses 0 (fill), layer 1 misses 1 (fill, evicts (0, 0)); layer 2 hit, no lookup.
    # t2: layer 0 misses 0 (fill, evicts (1, 1)), layer 1 misses 1 (fill, evicts (0, 0)).
    # host layers: 0.2 + (0.5 + 1) + 0.1 = 1.8 ms each; the pinned run: launch + 0.4 ms.
    from edge_moe.cost_model import GRAPH_LAUNCH_S

    machine = dataclasses.replace(LAYERED, resident_layer_seconds=4e-4)
    trace = np.array([[[0], [1], [3]], [[0], [1], [2]]])
    r = simulate(trace, CacheConfig(1, 1, pinned_layers=1), MB, 4, machine)
    assert counts(r) == (2, 4, 4, 3) and r.pinned_layers == 1
    assert r.hit_rate_by_layer == (0.0, 0.0, 1.0)
    per_token = 1e-3 + 2 * 1.8e-3 + GRAPH_LAUNCH_S + 4e-4  # > PCIe 2 ms, DRAM 4 ms
    assert r.seconds_per_token == pytest.approx(per_token)
    # without a graph figure a pinned layer is priced as a host layer of k hits: 0.2 + 0.03 + 0.1
    assert LAYERED.pinned_seconds(2, 1) == pytest.approx(2 * 0.33e-3)
    assert machine.pinned_seconds(0, 1) == 0.0
    # pinned layers only (no sets): the other layers miss and never fill
    r = simulate(trace, CacheConfig(0, 0, pinned_layers=2), MB, 4, machine)
    assert counts(r) == (4, 2, 0, 0)


def test_layers_no_slot_serves_by_hand() -> None:
    # their fixed part is uncached_layer_seconds, their misses read at uncached_dram_gbps (repacked)
    fig = dataclasses.replace(LAYERED, uncached_layer_seconds=1e-4, uncached_dram_gbps=2.0)
    assert fig.layer_time(0, 1, 0, MB, served=True) == pytest.approx(2e-4 + 5e-4 + 1e-3)
    assert fig.layer_time(0, 1, 0, MB, served=False) == pytest.approx(1e-4 + 5e-4 + 0.5e-3)
    # the no-cache baseline is every layer such a layer: 1 + 2 x (0.1 + 0.5 + 0.5) ms
    assert fig.no_cache_seconds(2, 1, MB) == pytest.approx(3.2e-3)
    # pinned layers only, no sets: the other layers are priced the same way
    r = simulate(np.array([[[0], [1]]]), CacheConfig(0, 0, pinned_layers=1), MB, 4,
                 dataclasses.replace(fig, resident_layer_seconds=4e-4))
    from edge_moe.cost_model import GRAPH_LAUNCH_S
    assert r.seconds_per_token == pytest.approx(1e-3 + 1.1e-3 + GRAPH_LAUNCH_S + 4e-4)


def test_decode_streaming_by_hand() -> None:
    # LAYERED with up to 2 misses a layer streamed at 0.05 ms of host time each: CPU 0.5 + 1 ms a
    # miss, a streamed one 1 ms over PCIe + the hit kernels (0.03 + 0.1 ms an expert) meanwhile.
    # 4 misses: s=0 4.5 ms; s=1 0.05 + max(3.5, 1.13) = 3.55; s=2 0.1 + max(2.5, 2.23) = 2.6
    fig = dataclasses.replace(LAYERED, decode_stream_max=2, stream_issue_seconds=5e-5)
    assert fig.stream_split(0, 4, MB) == 2
    assert fig.experts_seconds(0, 4, 2, MB) == pytest.approx(2.6e-3)
    assert fig.layer_time(0, 4, 0, MB) == pytest.approx(2e-4 + 2.6e-3)
    # without the cap s=3 (0.15 + max(1.5, 3.33)) and s=4 (0.2 + 4.43) are slower than s=2
    assert dataclasses.replace(fig, decode_stream_max=4).stream_split(0, 4, MB) == 2
    # launching a layer's experts graph for streamed experts alone (no hit) costs its own time
    launch = dataclasses.replace(fig, stream_layer_seconds=3e-4)
    assert launch.experts_seconds(0, 4, 2, MB) == pytest.approx(2.9e-3)
    assert launch.experts_seconds(1, 4, 2, MB) == pytest.approx(0.1e-3 + max(2.5e-3, 2e-3 + 0.03e-3 + 0.3e-3))
    # 1 miss: 1.5 ms on the CPU, 0.05 + 1.13 streamed; 2: 2.5, 1.55, 0.1 + 2.23 -> 1; 3: -> 2
    assert fig.decode_stream_rule(4, MB, served=True) == (0, 1, 1, 2, 2)
    # the token: 1 + 2.8 ms serial, above PCIe (2 streamed) 2 ms and the CPU's DRAM (2 misses) 2 ms
    assert fig.token_seconds([(0, 4, 0)], MB) == pytest.approx(3.8e-3)
    # no cache, no ring: nothing streamed (1 + 0.2 + 4.5 ms)
    assert fig.no_cache_seconds(1, 4, MB) == pytest.approx(5.7e-3)
    # a link 10x slower than the CPU path: streaming never pays, the serial model is unchanged
    slow = dataclasses.replace(fig, pcie_gbps=0.1)
    assert slow.decode_stream_rule(8, MB) is None
    assert slow.layer_time(0, 4, 0, MB) == LAYERED.layer_time(0, 4, 0, MB)
    with pytest.raises(ValueError, match="decode_stream_max"):
        dataclasses.replace(fig, decode_stream_max=-1)
    # read in place at half the copy engine's rate: a streamed expert's 1 ms over PCIe becomes 2
    half = dataclasses.replace(fig, stream_pcie_fraction=0.5)
    assert half.experts_seconds(0, 4, 2, MB) == pytest.approx(0.1e-3 + max(2.5e-3, 4e-3 + 0.23e-3))
    assert half.stream_split(0, 4, MB) == 1  # s=1: 0.05 + max(3.5, 2.13) = 3.55; s=2: 4.33; s=0: 4.5
    with pytest.raises(ValueError, match="stream_pcie_fraction"):
        dataclasses.replace(fig, stream_pcie_fraction=0.0)


def test_zero_copy_figures_stream_qwen3_experts() -> None:
    """decode_figures with the session-13 constants: Qwen3-30B-A3B's 2.65 MB experts at 48 GB/s of
    DRAM and 54 of PCIe, in layers no cache serves: copied (44 us of host time each) streaming never
    pays; read in place (3 us, 0.87 of the PCIe rate) about half of a layer's misses go to the GPU,
    the 4 of 8 an A/B on the GPU machine found fastest. Mixtral's 99 MB experts: 1 of 2 either way."""
    from edge_moe.cost_model import decode_figures

    def rule(slot: int, k: int, stream_max: int, zero_copy: bool) -> tuple[int, ...] | None:
        f = decode_figures(n_layer=48, k=k, slot_bytes=slot, layer_dense_bytes=20e6, outside_dense_bytes=3e8,
                           dram_gbps=48, pcie_gbps=54, gpu_gemv_gbps=2700, decode_stream_max=stream_max,
                           zero_copy=zero_copy)
        return f.decode_stream_rule(k, slot, served=False)

    qwen3, mixtral = 3 * 884736, 3 * 33030144
    assert rule(qwen3, 8, 16, zero_copy=False) is None
    assert rule(qwen3, 8, 16, zero_copy=True)[8] == 4
    assert rule(mixtral, 2, 1, zero_copy=False) == rule(mixtral, 2, 1, zero_copy=True) == (0, 0, 1)
