"""decode_attn.decode_attention (one query token, split-K over the KV cache) against a float64
softmax reference, under Triton's interpreter here (conftest sets TRITON_INTERPRET=1) and
compiled on a CUDA machine. The decode parity tests (test_executor_parity.py) run it end to end."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from edge_moe.decode_attn import MAX_SPLITS, decode_attention, split_plan  # noqa: E402
from edge_moe.kv_cache import KVCache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: int) -> torch.Tensor:
    """[1, H * D] float64: head h attends keys 0..pos of KV head h // group, scaled by 1/sqrt(D)."""
    _, n_head, d = q.shape
    group = n_head // keys.shape[1]
    k = keys[:pos + 1].double().repeat_interleave(group, dim=1)  # [P, H, D]
    v = values[:pos + 1].double().repeat_interleave(group, dim=1)
    scores = torch.einsum("hd,phd->hp", q[0].double(), k) / math.sqrt(d)  # [H, P]
    return torch.einsum("hp,phd->hd", torch.softmax(scores, dim=-1), v).reshape(1, n_head * d)


def _case(n_head: int, kv: int, d: int, length: int, dtype: torch.dtype, seed: int,
          ) -> tuple[torch.Tensor, KVCache]:
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(1, n_head, d, generator=g) * 2).to(DEVICE, dtype)  # sharp enough softmaxes
    cache = KVCache(2, length + 5, kv, d, torch.device(DEVICE), dtype)  # rows past `length` exist
    cache.k.copy_(torch.randn(cache.k.shape, generator=g) * 2)
    cache.v.copy_(torch.randn(cache.v.shape, generator=g))
    return q, cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("n_head,kv", [(4, 4), (8, 2), (16, 2), (12, 2)], ids=["g1", "g4", "g8", "g6"])
@pytest.mark.parametrize("d", [64, 128])
def test_decode_attention_matches_softmax(dtype: torch.dtype, n_head: int, kv: int, d: int) -> None:
    """Positions at the first key, inside a chunk, at a chunk's edge and at S - 1; chunks of 32
    (one dot step) and 128 (two steps of 64), so several splits, some past the query."""
    length = 300  # not a multiple of any chunk: the last split is short
    q, cache = _case(n_head, kv, d, length, dtype, seed=n_head * d + kv)
    keys, values = cache.keys_values(1, length)  # [S, KV, D] views of layer 1 (row stride KV * D)
    tol = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float16: dict(rtol=5e-3, atol=5e-3),
           torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}[dtype]
    for chunk in (32, 128):
        for pos in (0, 45, 127, 128, length - 1):
            positions = torch.tensor([pos], device=DEVICE)
            out = decode_attention(q, keys, values, positions, chunk=chunk)
            assert out.shape == (1, n_head * d) and out.dtype == dtype
            torch.testing.assert_close(out.cpu().double(), _reference(q.cpu(), keys.cpu(), values.cpu(), pos),
                                       **tol, msg=lambda m: f"chunk {chunk}, position {pos}: {m}")


def test_decode_attention_default_plan_and_out_buffer() -> None:
    """The splits `split_plan` picks for a bucket, positions replayed through one `out` buffer and
    one positions tensor rewritten in place (as a CUDA graph replays it), keys past S unseen."""
    n_head, kv, d, length = 32, 4, 128, 512
    q, cache = _case(n_head, kv, d, length, torch.float16, seed=7)
    keys, values = cache.keys_values(0, length)
    out = torch.empty((1, n_head * d), dtype=torch.float16, device=DEVICE)
    positions = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    for pos in (3, 200, length - 1, length + 3):  # the last past S: clamped to the S keys given
        positions.fill_(pos)
        assert decode_attention(q, keys, values, positions, out=out) is out
        want = _reference(q.cpu(), keys.cpu(), values.cpu(), min(pos, length - 1))
        torch.testing.assert_close(out.cpu().double(), want, rtol=5e-3, atol=5e-3)


def test_split_plan() -> None:
    assert split_plan(256, 4) == (64, 4)
    assert split_plan(2048, 4) == (64, 32)
    assert split_plan(4096, 4) == (128, 32)
    assert split_plan(4096, 8) == (256, 16)
    for length in (1, 100, 256, 1000, 4096, 131072):
        for kv in (1, 4, 8):
            chunk, n = split_plan(length, kv)
            assert n <= MAX_SPLITS and (n - 1) * chunk < length <= n * chunk


def test_decode_attention_refuses_bad_shapes() -> None:
    q = torch.zeros(1, 6, 16, device=DEVICE)
    kv = torch.zeros(8, 4, 16, device=DEVICE)  # 4 KV heads do not divide 6 query heads
    with pytest.raises(ValueError, match="KV dividing H"):
        decode_attention(q, kv, kv, torch.zeros(1, dtype=torch.int64, device=DEVICE))
    long = torch.zeros(MAX_SPLITS + 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="splits"):  # more splits than the scratch holds
        decode_attention(q[:, :4], long, long, torch.zeros(1, dtype=torch.int64, device=DEVICE), chunk=1)
