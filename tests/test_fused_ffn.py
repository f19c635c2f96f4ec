"""The one-launch expert FFN (edge_moe/fused_ffn.py) against gguf.quants.dequantize + matmul,
and against the two-launch path it replaces. Under Triton's interpreter on CI (tiny shapes),
compiled on the GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

pytest.importorskip("triton")

from edge_moe.fused_ffn import fused_ffn_pairs, fused_supported  # noqa: E402
from edge_moe.quant_ops import QuantMatrix, glu_pairs, scatter_pairs  # noqa: E402
from tests.reference import x_as_int8_kernels_see  # noqa: E402
from tests.test_quant_kernels import DEVICE, _experts  # noqa: E402


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("e, f", [(256, 128), (96, 64)])  # 96: 3 blocks, no power-of-two step; rows masked
def test_fused_ffn_matches_reference(qtype: T, e: int, f: int) -> None:
    rng = np.random.default_rng(11 + e)
    experts, buf, offs = _experts(rng, qtype, e, f, 3)
    gate, down = QuantMatrix(int(qtype), f, e), QuantMatrix(int(qtype), e, f)
    assert fused_supported(gate, gate, down)
    x = (rng.standard_normal((2, e)) * 0.5).astype(np.float32)
    xt = torch.from_numpy(x).to(DEVICE, torch.float16)
    wt = torch.from_numpy(np.array([[0.7, 0.3], [0.6, 0.4]], dtype=np.float32)).to(DEVICE, torch.float16)
    # (token, expert, k index); the last pair is a miss (-1 offsets): the kernel must skip it
    pairs = [(0, 0, 0), (0, 2, 1), (1, 1, 0), (1, 0, 1)]
    table = np.array([[offs[3 * ex + m] for _, ex, _ in pairs] for m in range(3)]
                     + [[t for t, _, _ in pairs], [2 * t + j for t, _, j in pairs]], dtype=np.int64)
    table[:3, 3] = -1
    y = torch.full((2, e), 0.25, dtype=torch.float32, device=DEVICE)  # accumulates onto what is there
    fused_ffn_pairs(buf, gate, down, torch.from_numpy(table).to(DEVICE), xt, wt.view(-1), y)

    xr = x_as_int8_kernels_see(xt.float().cpu().numpy(), int(qtype))
    wr = wt.float().cpu().numpy()
    want = np.full((2, e), 0.25, dtype=np.float32)
    for t, ex, j in pairs[:3]:
        gr, ur, dr = experts[ex][1]
        a = gr @ xr[t]
        want[t] += wr[t, j] * (dr @ (a / (1 + np.exp(-a)) * (ur @ xr[t])))
    np.testing.assert_allclose(y.cpu().numpy(), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_fused_ffn_agrees_with_two_launch_path() -> None:
    """Same pairs through glu_pairs + scatter_pairs: equal up to the act quantization the
    two-launch path adds before down."""
    rng = np.random.default_rng(5)
    e, f = 128, 64
    experts, buf, offs = _experts(rng, T.Q4_0, e, f, 2)
    gate, down = QuantMatrix(int(T.Q4_0), f, e), QuantMatrix(int(T.Q4_0), e, f)
    xt = torch.from_numpy(rng.standard_normal((1, e)).astype(np.float32)).to(DEVICE, torch.float16)
    wt = torch.tensor([0.55, 0.45], dtype=torch.float16, device=DEVICE)
    table = torch.tensor([[offs[0], offs[3]], [offs[1], offs[4]], [offs[2], offs[5]], [0, 0], [0, 1]],
                         dtype=torch.int64, device=DEVICE)
    y_fused = torch.zeros((1, e), dtype=torch.float32, device=DEVICE)
    fused_ffn_pairs(buf, gate, down, table, xt, wt, y_fused)
    y_two = torch.zeros((1, e), dtype=torch.float32, device=DEVICE)
    act = glu_pairs(buf, gate, gate, table[0], table[1], xt, table[3].to(torch.int32))
    scatter_pairs(buf, down, table[2], act, wt, table[4].to(torch.int32), table[3].to(torch.int32), y_two)
    scale = y_two.abs().max().item()
    assert (y_fused - y_two).abs().max().item() < 0.02 * scale


def test_fused_ffn_refuses_other_layouts() -> None:
    q4k = QuantMatrix(int(T.Q4_K), 256, 256)
    q40 = QuantMatrix(int(T.Q4_0), 256, 256)
    assert not fused_supported(q4k, q4k, q4k)
    assert not fused_supported(q40, q40, QuantMatrix(int(T.Q8_0), 256, 256))
    with pytest.raises(ValueError, match="no fused kernel"):
        fused_ffn_pairs(None, q4k, q4k, torch.zeros((5, 1), dtype=torch.int64), torch.zeros(1, 256),  # type: ignore[arg-type]
                        torch.ones(1), torch.zeros(1, 256))


def test_fused_for_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default (slower than the two-launch path on the H100: fused_ffn.FUSED_MAX_FF);
    EDGE_MOE_FUSED_FFN=1 turns it on where the layouts allow, 0 off; other values are refused."""
    from edge_moe.fused_ffn import FUSED_MAX_FF, fused_for

    g, d = QuantMatrix(int(T.Q4_0), 768, 2048), QuantMatrix(int(T.Q4_0), 2048, 768)
    monkeypatch.delenv("EDGE_MOE_FUSED_FFN", raising=False)
    assert fused_for(g, g, d) == (768 <= FUSED_MAX_FF)
    monkeypatch.setenv("EDGE_MOE_FUSED_FFN", "1")
    assert fused_for(g, g, d)
    q4k = QuantMatrix(int(T.Q4_K), 768, 2048)
    assert not fused_for(q4k, q4k, QuantMatrix(int(T.Q4_K), 2048, 768))
    monkeypatch.setenv("EDGE_MOE_FUSED_FFN", "0")
    assert not fused_for(g, g, d)
    monkeypatch.setenv("EDGE_MOE_FUSED_FFN", "yes")
    with pytest.raises(ValueError, match="EDGE_MOE_FUSED_FFN"):
        fused_for(g, g, d)
