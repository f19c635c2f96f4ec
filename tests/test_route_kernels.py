"""The fused router + routing + pair table launch of resident layers (edge_moe/route_kernels.py)
against F.linear and torch's routing (archs.common.softmax_topk) and gpu_experts' pair-table layout. Under Triton's
interpreter on CI, on the GPU machine with CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_moe.archs.common import softmax_topk

pytest.importorskip("triton")
from edge_moe.route_kernels import route_pack, route_pairs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32  # the model dtype there


def _outputs(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.full((1, k), -7.0, device=DEVICE), torch.full((1, k), -7, dtype=torch.int64, device=DEVICE),
            torch.full((5, k), -7, dtype=torch.int64, device=DEVICE))


@pytest.mark.parametrize("n_expert, k, n_embd", [(8, 2, 64), (60, 4, 1100), (128, 8, 2048), (8, 2, 4096)])
@pytest.mark.parametrize("normalize, scale", [(True, 1.0), (False, 2.5)])
def test_route_pairs_matches_torch_router_and_routing(n_expert: int, k: int, n_embd: int, normalize: bool,
                                                      scale: float) -> None:
    """The router's GEMV and the routing of one token against F.linear + softmax_topk (60 experts:
    the last program's rows are partial; 1100: a partial last block of h)."""
    g = torch.Generator().manual_seed(n_expert * 10 + k + n_embd)
    h = torch.randn(1, n_embd, generator=g).to(DTYPE).to(DEVICE)
    router = (torch.randn(n_expert, n_embd, generator=g) * 3 / n_embd ** 0.5).to(DTYPE).to(DEVICE)
    bases = (torch.randperm(n_expert, generator=g) * 4096).to(torch.int64).to(DEVICE)  # slot byte offsets
    parts = torch.tensor([0, 1024, 2048], dtype=torch.int64, device=DEVICE)
    w, ids, pairs = _outputs(k)
    for _ in range(2):  # the ticket counter is back at 0 after a launch: a second one routes too
        w.fill_(-7)
        route_pairs(h, router, k, normalize, scale, bases, parts, w, ids, pairs)
        want_w, want_ids = softmax_topk(torch.nn.functional.linear(h, router), k, normalize, scale)
        assert torch.equal(ids.cpu(), want_ids.cpu())
        torch.testing.assert_close(w.cpu(), want_w.cpu(), rtol=2e-3, atol=1e-4)
        flat = want_ids.cpu().reshape(-1).numpy()
        expect = np.stack([bases.cpu().numpy()[flat] + o for o in (0, 1024, 2048)] + [np.zeros(k), np.arange(k)])
        assert np.array_equal(pairs.cpu().numpy(), expect)


@pytest.mark.parametrize("n_embd", [64, 1100, 2048])
def test_route_pairs_clears_the_accumulator(n_embd: int) -> None:
    """clear: the experts' float32 accumulator is zeroed by the same launch, shared among its
    programs (1100: a partial last share), the routing unchanged, nothing past the buffer touched."""
    n_expert, k = 128, 4
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, 256, generator=g).to(DEVICE)
    router = torch.randn(n_expert, 256, generator=g).to(DEVICE)
    bases = torch.arange(n_expert, dtype=torch.int64, device=DEVICE) * 512
    parts = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    outs = [_outputs(k) for _ in range(2)]
    backing = torch.full((n_embd + 5,), 9.0, device=DEVICE)
    acc = backing[:n_embd].view(1, n_embd)
    route_pairs(h, router, k, True, 1.0, bases, parts, *outs[0], clear=acc)
    route_pairs(h, router, k, True, 1.0, bases, parts, *outs[1])
    assert torch.count_nonzero(acc).item() == 0
    assert backing[n_embd:].eq(9.0).all()
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="clear must be"):
        route_pairs(h, router, k, True, 1.0, bases, parts, *outs[0], clear=acc.half())


def test_equal_probabilities_go_to_the_lower_id_first() -> None:
    h = torch.zeros((1, 16), device=DEVICE)
    h[0, 0] = 1.0
    router = torch.zeros((5, 16), device=DEVICE)
    router[:, 0] = torch.tensor([0.0, 5.0, 1.0, 5.0, 5.0])  # logits exactly these
    w, ids, pairs = _outputs(3)
    route_pairs(h, router, 3, True, 1.0, torch.arange(5, device=DEVICE), torch.zeros(3, dtype=torch.int64, device=DEVICE),
                w, ids, pairs)
    assert ids.cpu().tolist() == [[1, 3, 4]]
    torch.testing.assert_close(w.cpu(), torch.full((1, 3), 1 / 3))


def test_route_pairs_checks_its_buffers() -> None:
    h, router = torch.zeros((1, 32), device=DEVICE), torch.zeros((8, 32), device=DEVICE)
    w, ids, pairs = _outputs(2)
    bases, parts = torch.zeros(8, dtype=torch.int64, device=DEVICE), torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="outputs must be"):
        route_pairs(h, router, 2, True, 1.0, bases, parts, w, ids, torch.empty((5, 3), dtype=torch.int64))
    with pytest.raises(ValueError, match="float32"):
        route_pairs(h, router, 2, True, 1.0, bases, parts, w.half(), ids, pairs)
    with pytest.raises(ValueError, match="one token"):
        route_pairs(torch.zeros((3, 32), device=DEVICE), router, 2, True, 1.0, bases, parts, w, ids, pairs)
    with pytest.raises(ValueError, match="one token"):
        route_pairs(h, router.t(), 2, True, 1.0, bases, parts, w, ids, pairs)


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
