"""The grouped prefill kernels (edge_moe/grouped_kernels.py) against gguf.quants.dequantize +
numpy, Q4_0 and Q8_0; Triton's interpreter on CPU tensors here, compiled on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

pytest.importorskip("triton")

from edge_moe.grouped_kernels import (BT, LARGE_TILES, SMALL_TILES, device_tile_table, grouped_ffn,  # noqa: E402
                                      grouped_supported, tile_config, tile_table)
from tests.test_quant_kernels import DEVICE, _buffer, _quantized  # noqa: E402

E, F, N_EXPERT = 64, 128, 3


def test_tiles_cover_every_pair_once_grouped_by_slot() -> None:
    rng = np.random.default_rng(0)
    slot = rng.choice([5, 9, 2], size=40, p=[0.7, 0.2, 0.1])
    tok, widx = np.arange(40) // 2, np.arange(40)
    tile_slot, start, count, ptok, pwidx = tile_table(slot, tok, widx)
    assert count.max() <= BT and count.min() >= 1 and count.sum() == 40
    assert sorted(pwidx.tolist()) == list(range(40))  # a permutation of the pairs
    for s, a, c in zip(tile_slot, start, count):
        assert (slot[pwidx[a:a + c]] == s).all()  # a tile's pairs share its slot
    assert np.array_equal(ptok, tok[pwidx])
    assert sorted(set(tile_slot.tolist())) == [2, 5, 9] and np.array_equal(np.sort(start), start)


@pytest.mark.parametrize("bt", [4, 16])
def test_device_tiles_are_the_host_tiles_plus_empty_rows(bt: int) -> None:
    """device_tile_table (torch ops, here on the CPU) gives the host's tiles in the same order,
    then count-0 rows up to its fixed size; expert e's offsets are bases[e] + part offsets."""
    rng = np.random.default_rng(bt)
    n_expert, n_tok, k = 6, 19, 3
    ids = np.stack([rng.choice(n_expert, k, replace=False, p=[0.5, 0.2, 0.1, 0.1, 0.1, 0.0]) for _ in range(n_tok)])
    tok, j = np.nonzero(np.ones_like(ids, bool))
    slot, widx = ids[tok, j], tok * k + j
    want = tile_table(slot, tok, widx, bt)
    bases = torch.arange(n_expert, dtype=torch.int64) * 1000 + 7
    part_offsets = torch.tensor([[0], [100], [200]], dtype=torch.int64)
    off, start, count, ptok, pwidx = device_tile_table(torch.from_numpy(ids), n_expert, bt, bases, part_offsets)
    n_real = want[0].shape[0]
    assert off.shape == (3, ids.size // bt + n_expert) and count.shape == start.shape == (off.shape[1],)
    assert (count[n_real:] == 0).all() and (count[:n_real] > 0).all()
    assert np.array_equal(count[:n_real].numpy(), want[2]) and np.array_equal(start[:n_real].numpy(), want[1])
    assert np.array_equal(off[:, :n_real].numpy(), (want[0][None] * 1000 + 7) + np.array([[0], [100], [200]]))
    assert np.array_equal(ptok.numpy(), want[3]) and np.array_equal(pwidx.numpy(), want[4])
    assert ptok.dtype == start.dtype == count.dtype == torch.int32 and pwidx.dtype == torch.int64


def test_tile_config_by_busiest_expert_and_dims() -> None:
    assert tile_config(SMALL_TILES[0], 2048, 768) == SMALL_TILES
    assert tile_config(SMALL_TILES[0] + 1, 2048, 768) == LARGE_TILES
    # a K step must divide both dims (no masking in K): fewer blocks a step where it would not
    assert all(d % (tile_config(n, 2048, 832)[2] * 32) == 0 for n in (1, 100) for d in (2048, 832))
    assert tile_config(1, 2048, 64 * 3)[2] == 2


def test_supported_layouts() -> None:
    assert grouped_supported(int(T.Q4_0), int(T.Q4_0), int(T.Q8_0), 2048, 768)
    assert not grouped_supported(int(T.Q4_K), int(T.Q4_K), int(T.Q4_0), 2048, 768)
    assert not grouped_supported(int(T.Q4_0), int(T.Q8_0), int(T.Q4_0), 2048, 768)  # gate != up
    assert not grouped_supported(int(T.Q4_0), int(T.Q4_0), int(T.Q4_0), 2048, 96)  # F not a multiple of 64


@pytest.mark.parametrize("busiest", [1, 64], ids=["small-tiles", "large-tiles"])  # tile_config's choice
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("types", [(T.Q4_0, T.Q4_0), (T.Q8_0, T.Q4_0), (T.Q4_0, T.Q8_0)],
                         ids=lambda t: f"{t[0].name}-{t[1].name}")
def test_grouped_ffn_matches_reference(types: tuple[T, T], dtype: torch.dtype, busiest: int) -> None:
    qin, qdown = types
    rng = np.random.default_rng(int(qin) * 10 + int(qdown))
    mats = []  # per expert: gate, up, down (raw, dequantized)
    for _ in range(N_EXPERT):
        mats.append([_quantized(rng, qin, F, E), _quantized(rng, qin, F, E), _quantized(rng, qdown, E, F)])
    buf, offs = _buffer([m[0] for ex in mats for m in ex])
    n_tok, k = 23, 2
    # expert 0 is used by every token (two tiles of BT = 16), the others by a few
    ids = np.stack([[0, rng.integers(1, N_EXPERT)] for _ in range(n_tok)])
    w = rng.random((n_tok, k)).astype(np.float32)
    x = (rng.standard_normal((n_tok, E)) * 0.5).astype(np.float32)
    xt = torch.from_numpy(x).to(DEVICE, dtype)
    xr = xt.float().cpu().numpy()
    tok, j = np.nonzero(np.ones_like(ids, bool))
    slot = ids[tok, j]
    bt, bn, nb, warps = tile_config(busiest, E, F)
    tile_slot, start, count, ptok, pwidx = tile_table(slot, tok, tok * k + j, bt)
    assert (count.max() > 16) == (bt > 16)  # expert 0's 23 pairs: two tiles, or one
    tile_off = np.stack([[offs[3 * s + part] for s in tile_slot] for part in range(3)])  # [3, n_tiles]
    y = torch.zeros((n_tok, E), dtype=torch.float32, device=DEVICE)
    row_in = mats[0][0][0].shape[1]
    row_down = mats[0][2][0].shape[1]
    grouped_ffn(buf.bytes, buf.words, int(qin), int(qdown), E, F, row_in, row_down,
                torch.from_numpy(tile_off.astype(np.int64)).to(DEVICE),
                torch.from_numpy(start.astype(np.int32)).to(DEVICE), torch.from_numpy(count.astype(np.int32)).to(DEVICE),
                torch.from_numpy(ptok.astype(np.int32)).to(DEVICE), torch.from_numpy(pwidx.astype(np.int64)).to(DEVICE),
                torch.from_numpy(w.reshape(-1)).to(DEVICE), xt, y, bt, bn, nb, warps)
    want = np.zeros((n_tok, E), np.float32)
    for t in range(n_tok):
        for jj in range(k):
            (_, g), (_, u), (_, d) = mats[ids[t, jj]]
            a, b = g @ xr[t], u @ xr[t]
            act = a / (1 + np.exp(-a)) * b
            if dtype == torch.float16:
                act = act.astype(np.float16).astype(np.float32)  # the kernels keep act in x's dtype
            want[t] += w[t, jj] * (d @ act)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    np.testing.assert_allclose(y.cpu().numpy(), want, rtol=tol, atol=tol * np.abs(want).max())
