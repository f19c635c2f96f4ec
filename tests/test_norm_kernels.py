"""norm_kernels.add_rms_norm (the decode fronts' residual add + RMSNorm) against torch, under
Triton's interpreter here (conftest sets TRITON_INTERPRET=1) and compiled on a CUDA machine."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from edge_moe.archs.common import rms_norm  # noqa: E402
from edge_moe.norm_kernels import add_rms_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("adds", ["none", "gpu", "cpu", "both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("a_f32", [False, True], ids=["a_dtype", "a_f32"])
def test_add_rms_norm_matches_torch(adds: str, dtype: torch.dtype, a_f32: bool) -> None:
    """a_f32: y_gpu as the decode graphs keep it (float32, the expert kernels' accumulator)."""
    g = torch.Generator().manual_seed(3)
    t, e, eps = 2, 1000, 1e-6  # E not a power of two: the masked tail counts in neither the sum nor the stores
    x = torch.randn(t, e, generator=g).to(dtype)
    a = torch.randn(t, e, generator=g).to(torch.float32 if a_f32 else dtype) if adds in ("gpu", "both") else None
    b = torch.randn(t, e, generator=g) if adds in ("cpu", "both") else None  # float32, as y_cpu
    w = (1 + 0.1 * torch.randn(e, generator=g)).to(dtype)
    # the torch expression decode_segments._residual uses: x + (a.to(dtype) + b.to(dtype)), then the arch's norm
    y = None if b is None else b.to(dtype)
    a_dt = None if a is None else a.to(dtype)
    y = a_dt if y is None else (y if a_dt is None else a_dt + y)
    s = x if y is None else x + y
    ref_h = rms_norm(s.float(), w.float(), None, eps)
    dev = [v.to(DEVICE) if v is not None else None for v in (x, a, b, w)]
    x_out, h_out = torch.full_like(dev[0], 7), torch.full_like(dev[0], 7)
    add_rms_norm(dev[0], dev[1], dev[2], dev[3], eps, x_out, h_out)
    torch.testing.assert_close(x_out.cpu(), s, rtol=0, atol=0)  # the same roundings, in the same order
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(h_out.cpu().float(), ref_h, rtol=tol, atol=tol)


def test_add_rms_norm_rejects_bad_buffers() -> None:
    x = torch.zeros(1, 64, device=DEVICE)
    w = torch.ones(64, device=DEVICE)
    with pytest.raises(ValueError, match="x_out another buffer"):
        add_rms_norm(x, None, None, w, 1e-6, x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="a \\(1, 32\\) is not a contiguous"):
        add_rms_norm(x, torch.zeros(1, 32, device=DEVICE), None, w, 1e-6, torch.zeros_like(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="weight \\[E\\]"):
        add_rms_norm(x, None, None, w[:10], 1e-6, torch.zeros_like(x), torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("e", [96, 2048])
def test_add_rms_norm_quantizes_h_as_quantize_x_does(dtype: torch.dtype, e: int) -> None:
    """h_q: the normed row's Q8_0 blocks, bit for bit quant_ops.quantize_x(h_out) (96: not a power of
    two, the block padding past E is never stored); x_out and h_out unchanged by asking for it."""
    from edge_moe.quant_ops import quantize_x

    g = torch.Generator().manual_seed(e)
    t = 2
    x, a = (torch.randn(t, e, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    w = (1 + 0.1 * torch.randn(e, generator=g)).to(dtype).to(DEVICE)
    outs = [(torch.empty_like(x), torch.empty_like(x)) for _ in range(2)]
    backing = torch.full((t * e + 8,), 7, dtype=torch.int8, device=DEVICE)
    h_q = (backing[:t * e].view(t, e), torch.empty((t, e // 32), device=DEVICE), torch.empty((t, e // 32), device=DEVICE))
    add_rms_norm(x, a, None, w, 1e-6, *outs[0], h_q)
    add_rms_norm(x, a, None, w, 1e-6, *outs[1])
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    want = quantize_x(outs[0][1])
    for got, ref in zip(h_q, want):
        assert torch.equal(got.cpu(), ref.cpu())
    assert backing[t * e:].eq(7).all()
    with pytest.raises(ValueError, match="h_q must be"):
        add_rms_norm(x, a, None, w, 1e-6, *outs[0], (h_q[0], h_q[1][:, :1], h_q[2]))
