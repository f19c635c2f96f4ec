"""The one-launch q/k preparation (edge_moe/attn_kernels.py) against the torch path it
replaces on CUDA: the architecture's prepare_qk, then KVCache.store. That torch path is the
one checked against llama.cpp (test_executor_parity.py); on CUDA the parity tests run the
fused kernel end to end. Here Triton's interpreter runs it on CPU tensors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from edge_moe.archs import ARCH_OPS  # noqa: E402
from edge_moe.archs.common import rope_tables  # noqa: E402
from edge_moe.attn_kernels import qk_prepare  # noqa: E402
from edge_moe.kv_cache import KVCache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("arch", ["llama", "qwen3moe", "phimoe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_qk_prepare_matches_prepare_qk_and_store(arch: str, dtype: torch.dtype) -> None:
    ops = ARCH_OPS[arch]
    assert ops.fused_qk in ("rope", "head_norm")
    g = torch.Generator().manual_seed(1)
    n_head, kv, d, t, ctx = 4, 2, 16, 3, 12
    cfg = SimpleNamespace(rope_dim=12 if arch == "phimoe" else d, head_dim=d, rope_freq_base=10000.0,
                          norm_eps=1e-6)  # phimoe: a partial rope (dims past rope_dim stay)
    positions = torch.tensor([7, 2, 9], device=DEVICE)
    rope = rope_tables(cfg, ops.rope, positions, dtype)
    lw = SimpleNamespace(q_norm=(torch.rand(d, generator=g) + 0.5).to(DEVICE, dtype),
                         k_norm=(torch.rand(d, generator=g) + 0.5).to(DEVICE, dtype))
    qkv = (torch.randn(t, (n_head + 2 * kv) * d, generator=g) * 3).to(DEVICE, dtype)

    want_kv = KVCache(1, ctx, kv, d, torch.device(DEVICE), dtype)
    q_ref, k_ref, v_ref = qkv.split([n_head * d, kv * d, kv * d], dim=-1)
    q_ref, k_ref = ops.prepare_qk(q_ref.view(t, n_head, d), k_ref.view(t, kv, d), lw, cfg, rope)
    want_kv.store(0, positions, k_ref, v_ref.reshape(t, kv, d), ctx)

    got_kv = KVCache(1, ctx, kv, d, torch.device(DEVICE), dtype)
    norm = ops.fused_qk == "head_norm"
    q = qk_prepare(qkv, n_head, kv, d, positions, rope, lw.q_norm if norm else None, lw.k_norm if norm else None,
                   cfg.norm_eps, got_kv.k[0], got_kv.v[0])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=4e-3, atol=4e-3)
    torch.testing.assert_close(q.float(), q_ref.float(), **tol)
    torch.testing.assert_close(got_kv.k.float(), want_kv.k.float(), **tol)
    torch.testing.assert_close(got_kv.v, want_kv.v, rtol=0, atol=0)  # v is copied as it is
    untouched = torch.ones(ctx, dtype=torch.bool)
    untouched[positions.cpu()] = False
    assert not got_kv.k[0, untouched.to(DEVICE)].any()  # nothing written outside the positions


def test_qk_prepare_refuses_what_it_cannot_do() -> None:
    rope = rope_tables(SimpleNamespace(rope_dim=8, head_dim=8, rope_freq_base=1e4), ARCH_OPS["llama"].rope,
                       torch.tensor([0], device=DEVICE), torch.float32)
    cache = torch.zeros(4, 1, 8, device=DEVICE)
    with pytest.raises(ValueError, match="not \\[T"):
        qk_prepare(torch.zeros(1, 30, device=DEVICE), 2, 1, 8, torch.tensor([0], device=DEVICE), rope, None, None,
                   1e-6, cache, cache.clone())
    with pytest.raises(ValueError, match="per head"):
        qk_prepare(torch.zeros(1, 32, device=DEVICE), 2, 1, 8, torch.tensor([0], device=DEVICE), rope,
                   torch.ones(16, device=DEVICE), torch.ones(16, device=DEVICE), 1e-6, cache, cache.clone())
