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
