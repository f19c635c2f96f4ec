"""The fused routing + pair table launch of resident layers (edge_moe/route_kernels.py) against
torch's routing (archs.common.softmax_topk) and gpu_experts' pair-table layout. Under Triton's
interpreter on CI, on the GPU machine with CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_moe.archs.common import softmax_topk

pytest.importorskip("triton")
from edge_moe.route_kernels import route_pack, route_pairs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n_expert, k", [(8, 2), (60, 4), (128, 8)])
@pytest.mark.parametrize("normalize, scale", [(True, 1.0), (False, 2.5)])
@pytest.mark.parametrize("n_tok", [1, 3])
def test_route_pairs_matches_torch_routing(n_expert: int, k: int, normalize: bool, scale: float, n_tok: int) -> None:
    g = torch.Generator().manual_seed(n_expert * 10 + k + n_tok)
    logits = (torch.randn(n_tok, n_expert, generator=g) * 3).to(torch.float16).to(DEVICE)
    bases = (torch.randperm(n_expert, generator=g) * 4096).to(torch.int64).to(DEVICE)  # slot byte offsets
    parts = torch.tensor([0, 1024, 2048], dtype=torch.int64, device=DEVICE)
    w = torch.full((n_tok, k), -7.0, device=DEVICE)
    ids = torch.full((n_tok, k), -7, dtype=torch.int64, device=DEVICE)
    pairs = torch.full((5, n_tok * k), -7, dtype=torch.int64, device=DEVICE)
    route_pairs(logits, k, normalize, scale, bases, parts, w, ids, pairs)

    want_w, want_ids = softmax_topk(logits, k, normalize, scale)
    assert torch.equal(ids.cpu(), want_ids.cpu())
    torch.testing.assert_close(w.cpu(), want_w.cpu(), rtol=1e-5, atol=1e-6)
    flat = want_ids.cpu().reshape(-1).numpy()
    expect = np.stack([bases.cpu().numpy()[flat] + o for o in (0, 1024, 2048)]
                      + [np.arange(n_tok * k) // k, np.arange(n_tok * k)])
    assert np.array_equal(pairs.cpu().numpy(), expect)


def test_equal_probabilities_go_to_the_lower_id_first() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 5.0, 5.0]], device=DEVICE)
    w = torch.empty((1, 3), device=DEVICE)
    ids = torch.empty((1, 3), dtype=torch.int64, device=DEVICE)
    pairs = torch.empty((5, 3), dtype=torch.int64, device=DEVICE)
    route_pairs(logits, 3, True, 1.0, torch.arange(5, device=DEVICE), torch.zeros(3, dtype=torch.int64, device=DEVICE),
                w, ids, pairs)
    assert ids.cpu().tolist() == [[1, 3, 4]]
    torch.testing.assert_close(w.cpu(), torch.full((1, 3), 1 / 3))


def test_route_pairs_checks_its_buffers() -> None:
    logits = torch.zeros((1, 8), device=DEVICE)
    ok = dict(w_out=torch.empty((1, 2), device=DEVICE), ids_out=torch.empty((1, 2), dtype=torch.int64, device=DEVICE),
              pairs=torch.empty((5, 2), dtype=torch.int64, device=DEVICE))
    bases, parts = torch.zeros(8, dtype=torch.int64, device=DEVICE), torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="outputs must be"):
        route_pairs(logits, 2, True, 1.0, bases, parts, **{**ok, "pairs": torch.empty((5, 3), dtype=torch.int64)})
    with pytest.raises(ValueError, match="float32"):
        route_pairs(logits, 2, True, 1.0, bases, parts, **{**ok, "w_out": torch.empty((1, 2), dtype=torch.float16)})


@pytest.mark.parametrize("n_expert, k, n_embd", [(8, 2, 64), (128, 8, 2048), (60, 4, 1100)])
@pytest.mark.parametrize("normalize, scale", [(True, 1.0), (False, 2.5)])
def test_route_pack_matches_torch_routing_and_cat(n_expert: int, k: int, n_embd: int, normalize: bool,
                                                  scale: float) -> None:
    """A host layer's routing and row [ids | weights | logits | h], as decode_graphs' torch path
    builds it with softmax_topk and cat (n_embd 1100: h spans a partial last block)."""
    g = torch.Generator().manual_seed(n_expert + k + n_embd)
    logits = (torch.randn(1, n_expert, generator=g) * 3).to(DEVICE)
    h = torch.randn(1, n_embd, generator=g).to(torch.float16).to(DEVICE)
    w = torch.full((1, k), -7.0, device=DEVICE)
    row = torch.full((1, 2 * k + n_expert + n_embd), -7.0, device=DEVICE)
    route_pack(logits, h, k, normalize, scale, w, row)

    want_w, want_ids = softmax_topk(logits, k, normalize, scale)
    want = torch.cat([want_ids.float(), want_w.float(), logits.float(), h.float()], dim=1)
    torch.testing.assert_close(w.cpu(), want_w.cpu(), rtol=1e-5, atol=1e-6)
    assert torch.equal(row[:, :k].cpu(), want[:, :k].cpu())  # the ids, exactly
    torch.testing.assert_close(row.cpu(), want.cpu(), rtol=1e-5, atol=1e-6)


def test_route_pack_checks_its_buffers() -> None:
    logits, h = torch.zeros((1, 8), device=DEVICE), torch.zeros((1, 16), device=DEVICE)
    w, row = torch.empty((1, 2), device=DEVICE), torch.empty((1, 2 * 2 + 8 + 16), device=DEVICE)
    with pytest.raises(ValueError, match="one token"):
        route_pack(torch.zeros((2, 8), device=DEVICE), h, 2, True, 1.0, w, row)
    with pytest.raises(ValueError, match="outputs must be"):
        route_pack(logits, h, 2, True, 1.0, w, torch.empty((1, 27), device=DEVICE))
    with pytest.raises(ValueError, match="float32"):
        route_pack(logits, h, 2, True, 1.0, w.half(), row)
