"""The quantized-weight kernels against gguf.quants.dequantize + matmul, for every format.

On CUDA these run the compiled kernels; elsewhere Triton's interpreter runs the same kernels
on CPU tensors (tiny shapes only: the interpreter is slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

pytest.importorskip("triton")

from edge_moe.ggml_lib import quantize_rows  # noqa: E402
from edge_moe.quant_ops import (INT8_TYPES, QuantBuffer, QuantMatrix, dequantize as q_dequantize,  # noqa: E402
                                glu_pairs, matvec_pairs, quantize_x, scatter_pairs)
from tests.reference import x_as_int8_kernels_see  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TYPES = [T.Q4_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.F16, T.BF16]


def _quantized(rng: np.random.Generator, qtype: T, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(block bytes [n, row_bytes], their dequantized float32 values [n, k])."""
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.1
    if qtype == T.F16:
        raw = w.astype(np.float16).view(np.uint8).reshape(n, -1)
    elif qtype == T.BF16:
        raw = (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n, -1)
    else:
        raw = quantize_rows(w, int(qtype))
    return raw, dequantize(raw, int(qtype)).reshape(n, k).astype(np.float32)


def _buffer(parts: list[np.ndarray], pad: int = 7) -> tuple[QuantBuffer, list[int]]:
    """The parts one after another in one flat buffer, at odd-looking (but even) offsets."""
    offsets, chunks, at = [], [], 0
    for p in parts:
        gap = np.zeros(2 * pad, dtype=np.uint8)
        chunks += [gap, p.reshape(-1)]
        at += gap.size
        offsets.append(at)
        at += p.size
    data = torch.from_numpy(np.concatenate(chunks + [np.zeros(2, np.uint8)])).to(DEVICE)
    return QuantBuffer(data), offsets


def _experts(rng: np.random.Generator, qtype: T, e: int, f: int, n: int):
    """n experts (gate [f, e], up [f, e], down [e, f]) in one buffer: ([(bytes, values)], buffer,
    offsets: expert i's gate, up, down at offs[3i], offs[3i+1], offs[3i+2])."""
    experts = []
    for _ in range(n):
        g, gr = _quantized(rng, qtype, f, e)
        u, ur = _quantized(rng, qtype, f, e)
        d, dr = _quantized(rng, qtype, e, f)
        experts.append(((g, u, d), (gr, ur, dr)))
    buf, offs = _buffer([part for ex in experts for part in ex[0]])
    return experts, buf, offs


def _i64(v: list[int]) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int64, device=DEVICE)


def _i32(v: list[int]) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matvec_and_dequantize_match_gguf_reference(qtype: T) -> None:
    rng = np.random.default_rng(int(qtype))
    n, k = 19, 512  # rows not a multiple of the kernel's row tile
    raw_a, ref_a = _quantized(rng, qtype, n, k)
    raw_b, ref_b = _quantized(rng, qtype, n, k)
    buf, (off_a, off_b) = _buffer([raw_a, raw_b])
    m = QuantMatrix(int(qtype), n, k)
    assert m.row_bytes == raw_a.shape[1]
    x = rng.standard_normal((3, k)).astype(np.float32)
    xt = torch.from_numpy(x).to(DEVICE, torch.float16)
    xr = x_as_int8_kernels_see(xt.float().cpu().numpy(), int(qtype))

    out = matvec_pairs(buf, m, _i64([off_a, off_b, off_a]), xt, _i32([0, 2, 1])).cpu().numpy()
    want = np.stack([ref_a @ xr[0], ref_b @ xr[2], ref_a @ xr[1]])
    np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())

    deq = torch.empty((n, k), dtype=torch.float32, device=DEVICE)
    q_dequantize(buf, m, off_b, deq)
    np.testing.assert_allclose(deq.cpu().numpy(), ref_b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_expert_ffn_pairs_match_reference(qtype: T) -> None:
    """gate/up fused with SiLU, then down scattered with routing weights into token rows."""
    rng = np.random.default_rng(7)
    e, f = 256, 512
    experts, buf, offs = _experts(rng, qtype, e, f, 2)
    gate = QuantMatrix(int(qtype), f, e)
    down = QuantMatrix(int(qtype), e, f)
    x = (rng.standard_normal((2, e)) * 0.5).astype(np.float32)
    weights = np.array([[0.7, 0.3], [0.6, 0.4]], dtype=np.float32)
    # pairs: token 0 -> experts 0, 1; token 1 -> expert 1 (token 1's other expert is "on the CPU")
    pairs = [(0, 0, 0), (0, 1, 1), (1, 1, 0)]  # (token, expert, k index)
    xt = torch.from_numpy(x).to(DEVICE, torch.float16)
    xr = x_as_int8_kernels_see(xt.float().cpu().numpy(), int(qtype))
    act = glu_pairs(buf, gate, gate, _i64([offs[3 * ex] for _, ex, _ in pairs]),
                    _i64([offs[3 * ex + 1] for _, ex, _ in pairs]), xt, _i32([t for t, _, _ in pairs]))
    int8 = int(qtype) in INT8_TYPES  # then down quantizes act to int8
    y = torch.zeros((2, e), dtype=torch.float32, device=DEVICE)
    wt = torch.from_numpy(weights).to(DEVICE, torch.float16)
    scatter_pairs(buf, down, _i64([offs[3 * ex + 2] for _, ex, _ in pairs]), act, wt.view(-1),
                  _i32([t * 2 + j for t, _, j in pairs]), _i32([t for t, _, _ in pairs]), y)
    want = np.zeros((2, e), dtype=np.float32)
    wr = wt.float().cpu().numpy()
    for p, (t, ex, j) in enumerate(pairs):
        gr, ur, dr = experts[ex][1]
        a = gr @ xr[t]
        act_ref = a / (1 + np.exp(-a)) * (ur @ xr[t])  # [F]
        if int8:
            # The int8 quantization of act is discontinuous: a last-bit difference in act may move
            # a block's scale by one fp16 step. So check act itself, then down on the kernel's act.
            act_k = act[p].cpu().numpy()
            np.testing.assert_allclose(act_k, act_ref, rtol=2e-3, atol=2e-3 * np.abs(act_ref).max())
            act_ref = x_as_int8_kernels_see(act_k[None], int(qtype))[0]
        want[t] += wr[t, j] * (dr @ act_ref)
    np.testing.assert_allclose(y.cpu().numpy(), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_quantize_x_matches_ggml_q8_0() -> None:
    """The int8 kernels' x: ggml's Q8_0 values and scales, plus each block's scaled sum."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 96)) * [[0.01], [1.0], [30.0]]).astype(np.float32)
    x[1, 32:64] = 0.0  # an all-zero block: scale 0, no division by it
    q, d, s = (a.cpu().numpy() for a in quantize_x(torch.from_numpy(x).to(DEVICE)))
    ref = quantize_rows(x, T.Q8_0).reshape(3, 3, 34)
    want_d = ref[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)
    want_q = ref[:, :, 2:].view(np.int8).reshape(3, 96)
    np.testing.assert_array_equal(d, want_d)
    assert np.abs(q.astype(np.int32) - want_q).max() <= 1  # ties may round apart (1 / d in fp32)
    assert (q == want_q).mean() > 0.99
    np.testing.assert_allclose(s, d * q.reshape(3, 3, 32).sum(axis=2, dtype=np.float32), rtol=1e-6)


def test_layouts_refuse_what_no_kernel_reads() -> None:
    with pytest.raises(ValueError, match="no GPU kernel"):
        QuantMatrix(int(T.IQ2_XS), 4, 256)
    with pytest.raises(ValueError, match="does not fit"):
        QuantMatrix(int(T.Q4_K), 4, 300)
