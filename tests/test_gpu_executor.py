"""GPU-only checks of the executor (run on the GPU machine; skipped without CUDA).

Parity on CUDA is covered by test_executor_parity (its `device` parameter adds "cuda").
Here: 1,000 generated tokens with a partial cache leave GPU and host memory flat.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from edge_moe.executor import ExecutorConfig, HybridModel
from edge_moe.expert_cache import CacheConfig
from edge_moe.gpu_experts import GpuExpertsConfig
from edge_moe.sampling import Sampler, SamplingParams
from edge_moe.tokenizer import Tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_no_memory_growth_over_1000_tokens(tiny_gguf: Callable[[str, str], Path]) -> None:
    path = tiny_gguf("qwen3moe", "q8_0")
    tok = Tokenizer(path)
    cache = GpuExpertsConfig(CacheConfig(2, 3, "LRU"))
    model = HybridModel(path, ExecutorConfig(device="cuda", n_ctx=1200, n_threads=4, cache=cache))
    proc = psutil.Process()
    samples: dict[int, tuple[int, int, int]] = {}
    sampler = Sampler(SamplingParams(temperature=0.8, seed=1, min_p=0.0, top_p=1.0, top_k=0))
    history = tok.encode("Hello")
    logits = model.forward(history)[-1]
    for i in range(1, 1001):  # the generation loop without the EOS stop: exactly 1,000 tokens
        history.append(sampler(logits, history))
        logits = model.forward(history[-1:])[-1]
        if i in (200, 600, 1000):
            torch.cuda.synchronize()
            samples[i] = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved(), proc.memory_info().rss)
    stats = model.gpu.cache.stats
    print({k: (a / 2**20, r / 2**20, rss / 2**20) for k, (a, r, rss) in samples.items()}, stats.hit_rate)
    assert stats.hits > 0 and stats.fills > 0 and stats.misses > 0
    a200, r200, rss200 = samples[200]
    a1000, r1000, rss1000 = samples[1000]
    assert a1000 == a200, f"allocated VRAM grew from {a200} to {a1000} bytes"
    # the caching allocator may take one more block: attention's temporaries grow with the context
    assert r1000 - r200 <= 8 * 2**20, f"reserved VRAM grew from {r200} to {r1000} bytes"
    assert rss1000 - rss200 < 32 * 2**20, f"host RSS grew by {(rss1000 - rss200) / 2**20:.1f} MiB"
    model.close()
