"""Pinned layers (CacheConfig.pinned_layers): the last P layers keep every expert on the
accelerator and decode as graphs of consecutive layers with no host round trip, the layers
before them through the cache's sets or the CPU. Checked against llama.cpp's logits on the
same file (as tests/test_executor_parity.py), on a 5-layer tiny model so that a run of
pinned layers spans several layers and follows host layers that had CPU misses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_moe.converters.tiny_checkpoints import make_tiny_checkpoint
from edge_moe.executor import ExecutorConfig, HybridModel
from edge_moe.expert_cache import CacheConfig
from edge_moe.gpu_experts import GpuExpertsConfig
from tests.reference import llama_cpp_logits
from tests.test_executor_parity import BOUNDS, MIN_COMPARED, T_PREFILL, _compare, run_edge_moe

N_LAYERS = 5
OUTTYPE = "f16"  # fewest router near-ties over 5 layers (tau 2e-2), the runs are what is tested
PLACEMENTS = {
    # layers 0-1 share one set of 3 ways, layers 2-4 pinned: one run of three layers
    "sets+pinned": CacheConfig(1, 3, "LRU", pinned_layers=3),
    # layers 0-2 on the CPU only (no slots), layers 3-4 pinned (llama.cpp's --n-cpu-moe 3)
    "cpu+pinned": CacheConfig(0, 0, pinned_layers=2),
}


@pytest.fixture(scope="module")
def five_layer_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[int], np.ndarray]]:
    """arch -> (GGUF, tokens, reference logits), built once per module."""
    from edge_moe.converters.hf_to_gguf import convert

    cases: dict[str, tuple[Path, list[int], np.ndarray]] = {}

    def get(arch: str) -> tuple[Path, list[int], np.ndarray]:
        if arch not in cases:
            hf = make_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"hf5-{arch}"), seed=0, num_layers=N_LAYERS)
            path = convert(hf, tmp_path_factory.mktemp(f"gguf5-{arch}") / f"{arch}.gguf", outtype=OUTTYPE,
                           progress=False)
            tokens = _input_without_early_ties(path)
            if os.environ.get("EDGE_MOE_REFERENCE") == "cpu":  # see test_executor_parity._reference
                ref, _, m = run_edge_moe(path, tokens, None, "cpu")
                m.close()
            else:
                ref = llama_cpp_logits(path, tokens)
            cases[arch] = (path, tokens, ref)
        return cases[arch]

    return get  # type: ignore[return-value]


def _input_without_early_ties(path: Path) -> list[int]:
    """As test_executor_parity._tokens: the first MIN_COMPARED + 2 tokens route with margins
    of at least 1.5 x tau (our router, no cache; never looks at llama.cpp)."""
    for seed in range(30):
        tokens = [int(t) for t in np.random.default_rng([7, seed]).integers(3, 500, size=T_PREFILL + 12)]
        _, margins, model = run_edge_moe(path, tokens, None)
        model.close()
        if (margins[:MIN_COMPARED + 2] >= 1.5 * BOUNDS[OUTTYPE][0]).all():
            return tokens
    raise AssertionError(f"{path}: no input without early router near-ties in 30 tries")


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("arch", ["mixtral", "qwen3moe", "qwen2moe"])  # qwen2moe: a shared expert beside CPU-only layers
def test_pinned_runs_match_llama_cpp(arch: str, placement: str, five_layer_case) -> None:
    pytest.importorskip("triton")
    path, tokens, ref = five_layer_case(arch)
    _, margins, probe = run_edge_moe(path, tokens, None)  # routing margins (same routing as below)
    probe.close()
    cuda = torch.cuda.is_available()
    config = PLACEMENTS[placement]
    model = HybridModel(path, ExecutorConfig(device="cuda" if cuda else "cpu", dtype="float32", n_ctx=64, n_threads=2,
                                             cache=GpuExpertsConfig(config, kernels="triton"),
                                             decode_graphs="on" if cuda else "uncaptured"))
    out = [model.forward(tokens[:T_PREFILL])] + [model.forward([t]) for t in tokens[T_PREFILL:]]
    graphs, cache = model.decode_graphs, model.gpu.cache
    assert graphs is not None and not graphs.resident
    assert graphs._fused_route, "the runs route with edge_moe/route_kernels.py"
    n_decode = len(tokens) - T_PREFILL
    assert graphs.runs == n_decode, "one graph of pinned layers per decode token"
    k, first = model.cfg.n_expert_used, N_LAYERS - config.pinned_layers
    stats = cache.stats
    assert all(stats.hits_by_layer[il] == len(tokens) * k for il in range(first, N_LAYERS))
    assert sum(stats.misses_by_layer[:first]) > 0, "the layers before the run had CPU misses"
    assert stats.misses == sum(stats.misses_by_layer[:first])
    if config.n_sets == 0:
        assert stats.fills == 0 and sum(stats.hits_by_layer[:first]) == 0
    # the pinned layers' lookups (the prompt's: decode runs them on the device) read a table and
    # pin nothing; the other layers' pins were all released
    assert not any(cache.is_pinned(slot) for slot in range(cache.n_slots))
    with pytest.raises(ValueError, match="out of range"):
        model.gpu.lookup(N_LAYERS - 1, np.array([[0, model.cfg.n_expert]], dtype=np.int32))
    model.close()
    tau, bound = BOUNDS[OUTTYPE]
    _compare(torch.cat(out).cpu().numpy(), ref, margins, tau, bound, f"{arch} {placement} pinned runs")


def test_pinned_layers_on_the_host_path_match_llama_cpp(five_layer_case) -> None:
    """With a routing watcher (tracing) every layer goes through the host, pinned ones as hits."""
    path, tokens, ref = five_layer_case("mixtral")
    cache = GpuExpertsConfig(PLACEMENTS["sets+pinned"])  # reference kernels on the CPU device
    ours, margins, model = run_edge_moe(path, tokens, cache)
    stats = model.gpu.cache.stats
    assert stats.misses_by_layer[2:] == [0, 0, 0] and stats.hits_by_layer[2] == len(tokens) * model.cfg.n_expert_used
    model.close()
    assert (margins[:MIN_COMPARED] > 0).all()
    tau, bound = BOUNDS[OUTTYPE]
    _compare(ours, ref, margins, tau, bound, "mixtral pinned layers, host path")


def test_layers_no_slot_serves_are_repacked(tiny_gguf, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU experts of the layers no GPU slot serves go to ggml's repacked layout (Q4_0 has
    one on x86 with AVX2 and on ARM): all layers without a cache, none when the sets serve every
    layer, the unpinned ones with pinned layers and no sets; never with cpu_repack "off" or when
    RAM would not hold the copy. Logits stay llama.cpp's (test_executor_parity runs with it)."""
    import edge_moe.executor as ex
    from edge_moe.ggml_lib import cpu_extra_buffer_types

    if "CPU_REPACK" not in cpu_extra_buffer_types():
        pytest.skip("this CPU has no ggml repacked layout")
    path = tiny_gguf("mixtral", "q4_0")

    def repacked(cache: CacheConfig | None, **kw: str) -> list[int]:
        model = HybridModel(path, ExecutorConfig(device="cpu", n_threads=2, n_ctx=32,
                                                 cache=None if cache is None else GpuExpertsConfig(cache), **kw))
        got = model.repacked_layers
        assert all(bool(model.cpu_layers[i].repacked) == (i in got) for i in range(model.cfg.n_layer))
        model.close()
        return got

    assert repacked(None) == [0, 1]
    assert repacked(CacheConfig(2, 3)) == []
    assert repacked(CacheConfig(0, 0, pinned_layers=1)) == [0]
    assert repacked(None, cpu_repack="off") == []
    monkeypatch.setattr(ex, "REPACK_RAM_HEADROOM", 1 << 60)  # no machine has that much to spare
    assert repacked(None) == []


def test_run_flags_place_pinned_layers(tiny_gguf) -> None:
    """`edge-moe run --pinned-layers P [--gpu-budget G]`: P layers pinned, the slots left over as
    sets for the others (as the planner places them), none when too few; a budget smaller than
    the pinned layers is an error naming both flags."""
    import argparse

    from edge_moe.gguf_file import GGUFFile
    from edge_moe.gpu_experts import slot_nbytes
    from edge_moe.model_config import read_config
    from edge_moe.run_cli import _cache_config

    path = str(tiny_gguf("mixtral", "q8_0"))
    with GGUFFile(path) as gguf:
        slot = slot_nbytes(gguf, read_config(gguf))

    def placed(**flags: float) -> tuple[int, int, int]:
        args = dict(gpu_budget=None, cache_nblocks=None, cache_nways=None, pinned_layers=None, cache_admission=None,
                    cache_quota=None, cache_replace_policy=None)
        c = _cache_config(argparse.Namespace(**{**args, **flags}), path).cache
        return c.n_sets, c.n_ways, c.pinned_layers

    gib = slot / 2**30
    assert placed(gpu_budget=11.5 * gib, pinned_layers=1) == (1, 3, 1)  # 8 pinned + 3 ways for layer 0
    assert placed(gpu_budget=8.2 * gib, pinned_layers=1) == (0, 0, 1)
    assert placed(gpu_budget=6.5 * gib) == (2, 3, 0)
    assert placed(pinned_layers=1) == (0, 0, 1)
    assert placed(pinned_layers=1, cache_nways=3) == (1, 3, 1)
    with pytest.raises(ValueError, match="--pinned-layers 1 needs .* more than --gpu-budget"):
        placed(gpu_budget=3 * gib, pinned_layers=1)
