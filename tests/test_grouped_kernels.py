"""The grouped prefill kernels (edge_moe/grouped_kernels.py) against gguf.quants.dequantize +
numpy, Q4_0 and Q8_0; Triton's interpreter on CPU tensors here, compiled on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T

pytest.importorskip("triton")

from edge_moe.grouped_kernels import (BT, LARGE_TILES, SMALL_TILES, byte_order, device_tile_table,  # noqa: E402
                                      grouped_ffn, grouped_supported, tile_config, tile_table)
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
    assert tile_config(143, 4096, 14336) == LARGE_TILES  # Mixtral's ~128 pairs an expert: the same tiles
    # a K step must divide both dims (no masking in K): fewer blocks a step where it would not
    assert all(d % (tile_config(n, 2048, 832)[2] * 32) == 0 for n in (1, 100) for d in (2048, 832))
    assert tile_config(1, 2048, 64 * 3)[2] == 2
    assert all(c[1] % 32 == 0 for c in (SMALL_TILES, LARGE_TILES))  # act is permuted per 32 columns


def test_byte_order_is_the_q4_0_word_order() -> None:
    """Position 4j..4j+3 of a block <- columns 2j, 2j+16, 2j+1, 2j+17 (int16 word j's nibbles,
    low to high); a permutation within each block of 32."""
    p = byte_order(96).numpy()
    assert p[:8].tolist() == [0, 16, 1, 17, 2, 18, 3, 19] and p[28:32].tolist() == [14, 30, 15, 31]
    assert p[32:36].tolist() == [32, 48, 33, 49] and sorted(p.tolist()) == list(range(96))
    assert (p // 32 == np.arange(96) // 32).all()


def test_supported_layouts() -> None:
    assert grouped_supported(int(T.Q4_0), int(T.Q4_0), int(T.Q8_0), 2048, 768)
    assert not grouped_supported(int(T.Q4_K), int(T.Q4_K), int(T.Q4_0), 2048, 768)
    assert not grouped_supported(int(T.Q4_0), int(T.Q8_0), int(T.Q4_0), 2048, 768)  # gate != up
    assert not grouped_supported(int(T.Q4_0), int(T.Q4_0), int(T.Q4_0), 2048, 96)  # F not a multiple of 64


def _case(qin: T, qdown: T, dtype: torch.dtype, f: int = F, n_tok: int = 23, seed: int = 0):
    """N_EXPERT experts (gate, up [f, E] in qin, down [E, f] in qdown) in one buffer, k = 2
    routing with expert 0 on every token (more than one 16-pair tile), x [n_tok, E] in `dtype`.
    Returns (buf, offs, ids [n_tok, k], weights [n_tok, k], x, row bytes in / down, want): want
    is gguf.quants.dequantize + numpy, act rounded to fp16 where the kernels keep it so."""
    rng = np.random.default_rng(int(qin) * 10 + int(qdown) + 1000 * seed)
    mats = []  # per expert: gate, up, down (raw, dequantized)
    for _ in range(N_EXPERT):
        mats.append([_quantized(rng, qin, f, E), _quantized(rng, qin, f, E), _quantized(rng, qdown, E, f)])
    buf, offs = _buffer([m[0] for ex in mats for m in ex])
    k = 2
    ids = np.stack([[0, rng.integers(1, N_EXPERT)] for _ in range(n_tok)])
    w = rng.random((n_tok, k)).astype(np.float32)
    x = (rng.standard_normal((n_tok, E)) * 0.5).astype(np.float32)
    xt = torch.from_numpy(x).to(DEVICE, dtype)
    xr = xt.float().cpu().numpy()
    want = np.zeros((n_tok, E), np.float32)
    for t in range(n_tok):
        for jj in range(k):
            (_, g), (_, u), (_, d) = mats[ids[t, jj]]
            a, b = g @ xr[t], u @ xr[t]
            act = a / (1 + np.exp(-a)) * b
            if dtype != torch.float32:
                act = act.astype(np.float16).astype(np.float32)  # the kernels keep act in fp16
            want[t] += w[t, jj] * (d @ act)
    return buf, offs, ids, w, xt, mats[0][0][0].shape[1], mats[0][2][0].shape[1], want


def _host_tables(ids: np.ndarray, offs: list[int], bt: int) -> tuple[torch.Tensor, ...]:
    """tile_table's tiles of the routing ids [T, k] as grouped_ffn's device tables."""
    k = ids.shape[1]
    tok, j = np.nonzero(np.ones_like(ids, bool))
    tile_slot, start, count, ptok, pwidx = tile_table(ids[tok, j], tok, tok * k + j, bt)
    tile_off = np.stack([[offs[3 * s + part] for s in tile_slot] for part in range(3)])  # [3, n_tiles]
    return (torch.from_numpy(tile_off.astype(np.int64)).to(DEVICE), torch.from_numpy(start.astype(np.int32)).to(DEVICE),
            torch.from_numpy(count.astype(np.int32)).to(DEVICE), torch.from_numpy(ptok.astype(np.int32)).to(DEVICE),
            torch.from_numpy(pwidx.astype(np.int64)).to(DEVICE))


def _run(buf, qin: T, qdown: T, f: int, row_in: int, row_down: int, tables, w: np.ndarray, x: torch.Tensor,
         config: tuple[int, ...]) -> np.ndarray:
    y = torch.zeros((x.shape[0], E), dtype=torch.float32, device=DEVICE)
    grouped_ffn(buf.words, int(qin), int(qdown), E, f, row_in, row_down, *tables,
                torch.from_numpy(w.reshape(-1)).to(DEVICE), x, y, *config)
    return y.cpu().numpy()


def _check(got: np.ndarray, want: np.ndarray, dtype: torch.dtype) -> None:
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


TYPE_PAIRS = [(T.Q4_0, T.Q4_0), (T.Q8_0, T.Q4_0), (T.Q4_0, T.Q8_0), (T.Q8_0, T.Q8_0)]  # (gate/up, down)


@pytest.mark.parametrize("busiest", [1, 64], ids=["small-tiles", "large-tiles"])  # tile_config's choice
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("types", TYPE_PAIRS, ids=lambda t: f"{t[0].name}-{t[1].name}")
def test_grouped_ffn_matches_reference(types: tuple[T, T], dtype: torch.dtype, busiest: int) -> None:
    """Every pairing of types: Q4_0 gate / up take x permuted into their word order, a Q4_0
    down takes act written in its order, Q8_0 neither (a wrong order is a wrong result)."""
    qin, qdown = types
    buf, offs, ids, w, x, row_in, row_down, want = _case(qin, qdown, dtype)
    config = tile_config(busiest, E, F)
    tables = _host_tables(ids, offs, config[0])
    assert (tables[2].max() > 16) == (config[0] > 16)  # expert 0's 23 pairs: two tiles, or one
    _check(_run(buf, qin, qdown, F, row_in, row_down, tables, w, x, config), want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("config", [(16, 32, 1, 4, 2), (32, 64, 2, 4, 3), (64, 128, 2, 4, 2)],
                         ids=lambda c: "bt{}-bn{}-nb{}-w{}-st{}".format(*c))
def test_row_blocks_and_k_steps(config: tuple[int, ...], dtype: torch.dtype) -> None:
    """n_ff = 192: several programs along the rows (bn 32, 64), or one whose last 64 rows are
    masked (bn 128), so act's per-32-column order must hold block by block wherever a program
    starts and whatever its edge; one to six K steps of nb blocks; bf16 x (fp16 dots)."""
    f = 192
    buf, offs, ids, w, x, row_in, row_down, want = _case(T.Q4_0, T.Q4_0, dtype, f=f, seed=1)
    got = _run(buf, T.Q4_0, T.Q4_0, f, row_in, row_down, _host_tables(ids, offs, config[0]), w, x, config)
    _check(got, want, dtype)


@pytest.mark.parametrize("types", TYPE_PAIRS[:3], ids=lambda t: f"{t[0].name}-{t[1].name}")
def test_device_tables_give_the_host_tables_result(types: tuple[T, T]) -> None:
    """The resident path: device_tile_table's tables (count-0 rows past the real tiles, whose
    programs return at once) through grouped_ffn give the host tables' y."""
    qin, qdown = types
    dtype = torch.float16
    buf, offs, ids, w, x, row_in, row_down, want = _case(qin, qdown, dtype, seed=2)
    bases = torch.tensor(offs[0::3], dtype=torch.int64, device=DEVICE)  # equal-sized parts: regular offsets
    part = torch.tensor([[0], [offs[1] - offs[0]], [offs[2] - offs[0]]], dtype=torch.int64, device=DEVICE)
    assert all(offs[3 * i + j] == offs[3 * i] + int(part[j, 0]) for i in range(N_EXPERT) for j in range(3))
    config = tile_config(1, E, F)  # 16-pair tiles: expert 0 takes two
    tables = device_tile_table(torch.from_numpy(ids).to(DEVICE), N_EXPERT, config[0], bases, part)
    assert (tables[2] == 0).any()  # there are empty rows to skip
    got = _run(buf, qin, qdown, F, row_in, row_down, tables, w, x, config)
    ref = _run(buf, qin, qdown, F, row_in, row_down, _host_tables(ids, offs, config[0]), w, x, config)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())  # atomics: any order
    _check(got, want, dtype)
