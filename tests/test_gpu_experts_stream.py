"""Prefill streaming (edge_moe/gpu_experts.py): the cost rule, the config, which misses stream,
and that streamed experts give the CPU path's numbers whatever the ring size.

End-to-end parity with llama.cpp is in test_executor_parity (the "stream-*" caches and
test_triton_streaming_matches_llama_cpp); the CUDA-only checks are marked `gpu`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_moe.executor import ExecutorConfig, HybridModel
from edge_moe.expert_cache import CacheConfig
from edge_moe.gpu_experts import GpuExpertsConfig
from edge_moe.stream_rule import stream_slots_for, stream_threshold, stream_vram_bytes

MIXTRAL_Q4_0 = 3 * 4096 * 14336 * 18 // 32  # bytes of one expert


def test_threshold_from_the_cost_rule() -> None:
    # (0.1 ms + 99 MB at the 23 GB/s staging copy) vs 352 MFLOP a token at 0.2 TFLOP/s
    assert stream_threshold(MIXTRAL_Q4_0, 4096, 14336) == 3
    # a Qwen3 expert (2.65 MB, streamed in groups: the 23 GB/s staging copy of several threads,
    # 0.1 + 0.115 ms) vs 9.4 MFLOP a token
    assert stream_threshold(2_654_208, 2048, 768) == 5
    # a slower link or a faster CPU streams later; decode (one token) never streams
    assert stream_threshold(MIXTRAL_Q4_0, 4096, 14336, pcie_bytes_per_s=12e9) == 5  # a slower link binds
    assert stream_threshold(MIXTRAL_Q4_0, 4096, 14336, cpu_flops=1e12) == 13
    assert stream_threshold(1, 4096, 14336) == 2
    assert stream_vram_bytes(100, 4, 8, n_slots=3) == 300 + 4 * 8 * 2
    # the ring: two groups of up to 16 experts within 256 MiB
    assert [stream_slots_for(n) for n in (2_654_208, 8 << 20, MIXTRAL_Q4_0, 1 << 30)] == [32, 32, 2, 2]
    assert stream_vram_bytes(2_654_208, 2048, 768) == 32 * 2_654_208 + 2048 * 768 * 2


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="nothing on the GPU"):
        GpuExpertsConfig(None, stream_slots=0)
    with pytest.raises(ValueError, match="stream_slots"):
        GpuExpertsConfig(CacheConfig(2, 2), stream_slots=-1)
    with pytest.raises(ValueError, match="stream_min_tokens"):
        GpuExpertsConfig(None, stream_min_tokens=0)
    with pytest.raises(ValueError, match="preload needs a cache"):
        GpuExpertsConfig(None, preload="all")
    GpuExpertsConfig(CacheConfig(2, 2), stream_slots=0)  # a cache without streaming is fine


def _model(path: Path, config: GpuExpertsConfig | None, device: str = "cpu") -> HybridModel:
    return HybridModel(path, ExecutorConfig(device=device, dtype="float32", n_ctx=64, n_threads=2, cache=config))


def test_no_config_on_cpu_streams_nothing(tiny_gguf: Callable[[str, str], Path]) -> None:
    model = _model(tiny_gguf("mixtral", "q8_0"), None)
    assert model.gpu.store is None and model.gpu.stream_min_tokens is None
    ids = np.zeros((40, 2), dtype=np.int64)
    assert not model.gpu.stream_plan(ids, np.zeros_like(ids, dtype=bool)).any()
    model.close()


def test_cost_rule_is_off_on_a_cpu_device(tiny_gguf: Callable[[str, str], Path]) -> None:
    model = _model(tiny_gguf("mixtral", "q8_0"), GpuExpertsConfig(CacheConfig(2, 2)))
    assert model.gpu.stream_min_tokens is None  # the ring exists, but the CPU computes misses
    model.close()


def test_stream_plan_picks_misses_used_by_enough_tokens(tiny_gguf: Callable[[str, str], Path]) -> None:
    model = _model(tiny_gguf("mixtral", "q8_0"), GpuExpertsConfig(CacheConfig(2, 2), stream_min_tokens=3))
    gpu = model.gpu
    n = gpu.cache.n_slots  # the ring comes after the cache's slots: two groups of 16 tiny experts
    assert gpu._ring == list(range(n, n + 32))
    ids = np.array([[0, 1], [0, 2], [0, 1], [3, 1], [4, 5]])  # [T, k]
    hit = np.zeros_like(ids, dtype=bool)
    hit[3, 1] = True  # expert 1 of token 3 is cached: 2 missed uses of expert 1 remain
    plan = gpu.stream_plan(ids, hit)
    assert plan.tolist() == [[True, False], [True, False], [True, False], [False, False], [False, False]]
    assert not gpu.stream_plan(ids[:2], hit[:2]).any()  # fewer tokens than the threshold
    model.close()


@pytest.mark.parametrize("register", [None, False], ids=["register-auto", "staging"])
@pytest.mark.parametrize("kernels", ["reference", "triton"])
@pytest.mark.parametrize("ring", [1, 2, 3, 4, None])  # 4: groups of 2; None: one group of all 8
def test_streamed_experts_equal_hits_and_the_cpu_path(ring: int, kernels: str, register: bool | None,
                                                      tiny_gguf: Callable[[str, str], Path]) -> None:
    """Every expert of a layer streamed through a ring smaller than the expert count gives what
    the same experts give as cache hits (same kernels), and the CPU path's result. On CUDA,
    register-auto streams by DMA from the page-locked file map, staging through pinned copies."""
    if kernels == "triton":
        pytest.importorskip("triton")
    path = tiny_gguf("mixtral", "q4_0")
    # Triton reads CUDA tensors, or CPU ones under its interpreter (conftest sets it without a GPU)
    device = "cuda" if kernels == "triton" and torch.cuda.is_available() else "cpu"
    model = _model(path, GpuExpertsConfig(None, kernels=kernels, stream_slots=ring, stream_min_tokens=1,
                                          register_host=register), device)
    assert (model.gpu._registered is not None) == (device == "cuda" and register is None)
    cached = _model(path, GpuExpertsConfig(CacheConfig(2, 8), preload="all", kernels=kernels, stream_slots=0), device)
    cfg, gpu = model.cfg, model.gpu
    rng = np.random.default_rng(0)
    n_tok = 24
    h = torch.from_numpy(rng.standard_normal((n_tok, cfg.n_embd)).astype(np.float32))  # [T, E]
    ids = np.stack([rng.permutation(cfg.n_expert)[:cfg.n_expert_used] for _ in range(n_tok)])  # [T, k]
    w = rng.random(ids.shape).astype(np.float32)
    for layer in (0, cfg.n_layer - 1):
        slots = gpu.lookup(layer, ids)
        streamed = gpu.stream_plan(ids, slots >= 0)
        assert streamed.all()
        before = gpu.n_streamed
        y = gpu.compute(layer, h.to(device), torch.from_numpy(w).to(device), slots, ids, streamed).cpu().numpy()
        assert gpu.n_streamed - before == len(np.unique(ids))
        hit_slots = cached.gpu.lookup(layer, ids)
        assert (hit_slots >= 0).all()
        y_hit = cached.gpu.compute(layer, h.to(device), torch.from_numpy(w).to(device), hit_slots).cpu().numpy()
        cached.gpu.after_layer(layer, ids, hit_slots)
        np.testing.assert_allclose(y, y_hit, rtol=1e-5, atol=1e-5 * np.abs(y_hit).max())
        ref = model.cpu.forward(model.cpu_layers[layer], h.numpy(), ids.astype(np.int32), w)
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err < 3e-2, f"layer {layer}: relative error {err:.2e}"  # the CPU quantizes activations to 8 bits
    model.close()
    cached.close()


def test_streaming_leaves_the_cache_alone(tiny_gguf: Callable[[str, str], Path]) -> None:
    """Same routing, same cache traffic and contents with streaming on and off: the ring is
    never a cache slot and a streamed expert is still a miss offered to admission."""
    path = tiny_gguf("qwen3moe", "q8_0")
    tokens = list(range(3, 40))
    runs = {}
    for name, n in (("off", None), ("on", 2)):
        model = _model(path, GpuExpertsConfig(CacheConfig(2, 3, "LRU"), stream_min_tokens=n))
        model.forward(tokens[:30])
        model.forward(tokens[30:31])
        s = model.gpu.cache.stats
        runs[name] = (s.hits, s.misses, s.fills, model.gpu.cache.contents(), model.gpu.n_streamed)
        model.close()
    assert runs["on"][:4] == runs["off"][:4]
    assert runs["off"][4] == 0 and runs["on"][4] > 0


def test_close_stops_the_fill_threads(tiny_gguf: Callable[[str, str], Path]) -> None:
    model = _model(tiny_gguf("mixtral", "q8_0"), GpuExpertsConfig(None, stream_min_tokens=1))
    store = model.gpu.store
    model.close()
    assert model.gpu.store is None and not any(t.is_alive() for t in store._pool.threads)


# ---- CUDA ---------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_no_config_on_cuda_streams_prefill_misses(tiny_gguf: Callable[[str, str], Path]) -> None:
    path = tiny_gguf("mixtral", "q8_0")
    tokens = list(range(3, 35))
    model = HybridModel(path, ExecutorConfig(device="cuda", dtype="float32", n_ctx=64, n_threads=2))
    assert model.gpu.config is not None and model.gpu.config.cache is None
    cfg = model.cfg
    assert model.gpu.stream_min_tokens == stream_threshold(model.gpu.expert_bytes, cfg.n_embd, cfg.n_ff_expert)
    model.gpu.stream_min_tokens = 2  # the tiny experts' tokens per call are below the rule's threshold
    ours = model.forward(tokens).cpu().numpy()
    assert model.gpu.n_streamed > 0
    model.close()
    ref_model = _model(path, None)
    ref = ref_model.forward(tokens).numpy()
    ref_model.close()
    assert np.abs(ours - ref).max() / ref.std() < 6e-2


def test_small_experts_stay_on_the_matvec_path_longer() -> None:
    """The dequantize+matmul path's fixed host cost pays off later for small experts."""
    from edge_moe.hit_compute import DEQUANT_MIN_TOKENS, dequant_min_tokens

    qwen3, mixtral = dequant_min_tokens(2_654_208), dequant_min_tokens(99_090_432)
    assert mixtral == DEQUANT_MIN_TOKENS and 30 <= qwen3 <= 40
    assert dequant_min_tokens(1_000) > 10_000  # tiny test experts: matvec unless forced


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_registration_covers_the_layers_filled_later(tiny_gguf: Callable[[str, str], Path]) -> None:
    """The non-pinned layers' expert bytes are page-locked (fills and streams DMA from them); a
    cache that holds every expert after its preload unlocks them (nothing is filled again)."""
    path = tiny_gguf("qwen3moe", "q8_0")
    partial = _model(path, GpuExpertsConfig(CacheConfig(1, 3, "LRU", pinned_layers=1), kernels="triton"), "cuda")
    gpu = partial.gpu
    assert gpu._registered is not None and sorted(gpu._host_views) == list(range(gpu.cache.first_pinned))
    assert all(v.is_pinned() for views in gpu._host_views.values() for v in views)
    partial.close()
    assert gpu._registered is None
    full = _model(path, GpuExpertsConfig(CacheConfig(2, 8), preload="all", kernels="triton"), "cuda")
    assert full.gpu.all_resident() and full.gpu._registered is None and not full.gpu._host_views
    full.close()
    # a cache that holds every expert but starts empty unlocks once its fills made it whole
    grows = _model(path, GpuExpertsConfig(CacheConfig(2, 8), kernels="triton"), "cuda")
    assert grows.gpu._registered is not None
    rng = np.random.default_rng(0)
    for _ in range(40):
        grows.forward(rng.integers(3, 200, 8).tolist())
        if grows.gpu.all_resident():
            break
    assert grows.gpu.all_resident() and grows.gpu._registered is None
    grows.close()


def test_decode_stream_rule_is_validated() -> None:
    from edge_moe.expert_cache import CacheConfig
    from edge_moe.gpu_experts import GpuExpertsConfig

    GpuExpertsConfig(CacheConfig(2, 3), decode_stream=(0, 1, 1))
    for bad in ((1,), (0, 2), (0, 1, -1)):  # decode_stream[m] must be in 0..m
        with pytest.raises(ValueError, match="decode_stream"):
            GpuExpertsConfig(CacheConfig(2, 3), decode_stream=bad)
