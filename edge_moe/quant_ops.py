"""Launchers for the quantized-weight kernels (edge_moe/quant_kernels.py).

Weights live in one flat uint8 tensor (`QuantBuffer`); a matrix is named by its layout
(`QuantMatrix`) and a byte offset into the buffer, one offset per (token, expert) pair, so a
whole layer's cached experts are computed in one launch whatever slots they sit in.
Offsets and row indices are int64/int32 device tensors prepared by the caller in one copy.

On a machine without CUDA the same kernels run under Triton's interpreter
(TRITON_INTERPRET=1, set before Triton is imported) on CPU tensors: slow, for tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from edge_moe.quant_kernels import (BLOCKS, MODE_GLU, MODE_SCATTER, MODE_STORE, Q4_0, Q4_K, Q5_K, Q6_K, Q8_0,
                                    _dequant_kernel,
                                    _matvec_kernel, _quantize_x_kernel)

SUPPORTED_TYPES = frozenset(BLOCKS)
# Rows per program, warps and blocks per loop step, chosen on the H100 by a sweep of
# benchmarks/quant_kernels_bench.py (session 5: one row per one-warp program, 32 blocks a step,
# was the fastest for the int8 kernels on both shapes); EDGE_MOE_QROWS / EDGE_MOE_QWARPS /
# EDGE_MOE_QBLOCKS override them for tuning runs. Short rows take several a program (`matvec_rows`).
MATVEC_ROWS = int(os.environ.get("EDGE_MOE_QROWS", "1"))
_ROWS_FORCED = "EDGE_MOE_QROWS" in os.environ
# A program should read at least ~1.5 KB of weights: a one-row program of a short row (Qwen3's down,
# 768 columns: 432 bytes in Q4_0) spends its time in latency, not bytes. Session 14's sweep
# (benchmarks/results/2026-11-25_session14, H100, 8 pairs, graph-timed): Qwen3 down Q4_0 13.5 ->
# 7.5 us at 4 rows, Q8_0 13.9 -> 9.6 at 2, Q4_K 13.8 -> 9.4 at 2, Q6_K 14.2 -> 12.2 at 2; rows of
# 1 KB or more (Qwen3's gate/up, every Mixtral matrix, the dense qkv / o) stay fastest at 1.
SHORT_ROW_BYTES = 1024
ROW_GROUP_BYTES = 2048  # at most this many bytes of rows a program, short rows
MATVEC_WARPS = int(os.environ.get("EDGE_MOE_QWARPS", "1"))
MATVEC_BLOCKS = int(os.environ.get("EDGE_MOE_QBLOCKS", "32"))  # int8 kernels: blocks of 32 per row per loop step
# Q5_K's int8 kernel keeps more live registers a step (the qh words beside the nibbles): 16 blocks a
# step measured 0.52 of fp16 GEMV bandwidth against 0.36 at 32 on Mixtral-shaped experts, H100,
# session 9 call B; Qwen3-shaped 0.28 vs 0.26. EDGE_MOE_QBLOCKS, when set, applies to every type.
_BLOCKS_BY_TYPE = {} if "EDGE_MOE_QBLOCKS" in os.environ else {Q5_K: 16}
DEQUANT_ROWS = int(os.environ.get("EDGE_MOE_QROWS_DEQUANT", "8"))
if MATVEC_BLOCKS < 8 or MATVEC_BLOCKS & (MATVEC_BLOCKS - 1) or MATVEC_ROWS & (MATVEC_ROWS - 1):
    raise ValueError(f"EDGE_MOE_QBLOCKS ({MATVEC_BLOCKS}) must be a power of two >= 8 (a Q4_K super-block "
                     f"is 8 blocks) and EDGE_MOE_QROWS ({MATVEC_ROWS}) a power of two")
# Formats whose matvecs take x quantized to int8 (dp4a); the others take it in float.
INT8_TYPES = frozenset((Q4_0, Q8_0, Q4_K, Q5_K, Q6_K))
QUANTIZE_BLOCKS = 32  # x blocks per program of the quantizing kernel


@dataclass(frozen=True)
class QuantMatrix:
    """Layout of one [n_rows, n_cols] matrix in a ggml block format (rows of n_cols weights)."""

    ggml_type: int
    n_rows: int
    n_cols: int

    def __post_init__(self) -> None:
        if self.ggml_type not in BLOCKS:
            raise ValueError(f"ggml type {self.ggml_type} has no GPU kernel (supported: {sorted(BLOCKS)})")
        block = BLOCKS[self.ggml_type][0]
        if self.n_rows <= 0 or self.n_cols <= 0 or self.n_cols % block:
            raise ValueError(f"a [{self.n_rows}, {self.n_cols}] matrix does not fit type {self.ggml_type}'s "
                             f"{block}-weight blocks")

    @property
    def row_bytes(self) -> int:
        block, nbytes = BLOCKS[self.ggml_type]
        return self.n_cols // block * nbytes

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_bytes


class QuantBuffer:
    """A flat uint8 device tensor holding block-format weights, with its 16-bit word view."""

    def __init__(self, data: torch.Tensor) -> None:
        if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() % 2:
            raise ValueError("a QuantBuffer is a flat uint8 tensor of even length")
        self.bytes = data
        self.words = data.view(torch.int16)

    @property
    def device(self) -> torch.device:
        return self.bytes.device


def _grid(n_pairs: int, n_rows: int, rows: int) -> tuple[int, int]:
    if n_pairs > 65535:
        raise ValueError(f"{n_pairs} (token, matrix) pairs in one launch: at most 65535 (CUDA's grid)")
    return (triton_cdiv(n_rows, rows), n_pairs)


def matvec_rows(m: QuantMatrix) -> int:
    """Rows a matvec program takes: MATVEC_ROWS, or for short rows (under SHORT_ROW_BYTES) the
    most (a power of two, at most 4; 2 for the K-quants, whose dots hold more registers a row)
    that stay within ROW_GROUP_BYTES. EDGE_MOE_QROWS, when set, applies to every matrix."""
    if _ROWS_FORCED or m.row_bytes >= SHORT_ROW_BYTES:
        return MATVEC_ROWS
    cap = 2 if m.ggml_type in (Q4_K, Q5_K, Q6_K) else 4
    rows = 1
    while rows < cap and 2 * rows * m.row_bytes <= ROW_GROUP_BYTES:
        rows *= 2
    return rows


def matvec_blocks(ggml_type: int) -> int:
    """Blocks of 32 weights a matvec program takes per loop step for this format."""
    return _BLOCKS_BY_TYPE.get(ggml_type, MATVEC_BLOCKS)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quantize_x(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, K] (K a multiple of 32) -> (int8 q [T, K], fp32 scales [T, K/32], fp32 scale *
    sum(q) [T, K/32]): ggml's Q8_0 quantization of each block of 32, for the int8 kernels."""
    t, k = x.shape
    if k % 32 or x.stride(1) != 1:
        raise ValueError(f"quantize_x needs rows of a multiple of 32 contiguous values, got {tuple(x.shape)}")
    q = torch.empty((t, k), dtype=torch.int8, device=x.device)
    d = torch.empty((t, k // 32), dtype=torch.float32, device=x.device)
    s = torch.empty((t, k // 32), dtype=torch.float32, device=x.device)
    if t:
        _quantize_x_kernel[(t, triton_cdiv(k // 32, QUANTIZE_BLOCKS))](x, x.stride(0), q, d, s, k,
                                                                      NB=QUANTIZE_BLOCKS, num_warps=4)
    return q, d, s


QuantizedX = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # quantize_x's (q, d, s)


def _launch(buf: QuantBuffer, m: QuantMatrix, mode: int, n_pairs: int, a_off: torch.Tensor, b_off: torch.Tensor,
            x: torch.Tensor, x_row: torch.Tensor, scales: torch.Tensor, scale_idx: torch.Tensor,
            out: torch.Tensor, out_row: torch.Tensor, xq: QuantizedX | None = None) -> None:
    """One launch of the matvec kernel over n_pairs pairs of `m`-shaped matrices. xq: x already
    quantized (quantize_x(x)'s values, e.g. by the norm that made x), for the int8 formats."""
    int8_x = m.ggml_type in INT8_TYPES
    if int8_x:
        q, xd, xs = quantize_x(x) if xq is None else xq
        xw, x_stride = q.view(torch.int32), m.n_cols // 4
    else:
        xw, xd, xs, x_stride = x, x, x, x.stride(0)
    rows = matvec_rows(m)
    _matvec_kernel[_grid(n_pairs, m.n_rows, rows)](
        buf.bytes, buf.words, a_off, b_off, xw, xd, xs, x_row, scales, scale_idx, out, out_row,
        m.n_rows, m.n_cols, m.row_bytes, x_stride, out.stride(0),
        QTYPE=m.ggml_type, MODE=mode, ROWS=rows, NBLK=matvec_blocks(m.ggml_type),
        INT8_X=int8_x, ASM=buf.device.type == "cuda", num_warps=MATVEC_WARPS)


def glu_pairs(buf: QuantBuffer, gate: QuantMatrix, up: QuantMatrix, gate_off: torch.Tensor,
              up_off: torch.Tensor, x: torch.Tensor, x_row: torch.Tensor, xq: QuantizedX | None = None) -> torch.Tensor:
    """act[p] = silu(gate_p @ x[x_row[p]]) * (up_p @ x[x_row[p]]) -> float32 [P, n_rows].

    gate_off/up_off: int64 [P] byte offsets of each pair's matrices; x [T, n_cols]."""
    if gate != up:
        raise ValueError("gate and up must share one layout for the fused kernel")
    p = gate_off.shape[0]
    act = torch.empty((p, gate.n_rows), dtype=torch.float32, device=buf.device)
    _launch(buf, gate, MODE_GLU, p, gate_off, up_off, x, x_row, act, x_row, act, x_row, xq)
    return act


def scatter_pairs(buf: QuantBuffer, down: QuantMatrix, down_off: torch.Tensor, act: torch.Tensor,
                  scales: torch.Tensor, scale_idx: torch.Tensor, out_row: torch.Tensor, y: torch.Tensor) -> None:
    """y[out_row[p]] += scales[scale_idx[p]] * (down_p @ act[p]) for every pair p.

    act: float [P, n_cols] (`glu_pairs`), row p for pair p.
    y: float32 [T, n_rows], accumulated atomically (pairs of one token add to one row)."""
    if y.dtype != torch.float32:
        raise ValueError("scatter_pairs accumulates into a float32 output")
    p = down_off.shape[0]  # the kernel reads act row p for pair p (no index table)
    _launch(buf, down, MODE_SCATTER, p, down_off, down_off, act, out_row, scales, scale_idx, y, out_row)


def matvec_pairs(buf: QuantBuffer, m: QuantMatrix, off: torch.Tensor, x: torch.Tensor,
                 x_row: torch.Tensor, out_dtype: torch.dtype = torch.float32, xq: QuantizedX | None = None,
                 ) -> torch.Tensor:
    """out[p] = M_p @ x[x_row[p]] -> [P, n_rows] in out_dtype (the kernel accumulates in
    float32 and rounds once on store); x [T, n_cols]."""
    p = off.shape[0]
    out = torch.empty((p, m.n_rows), dtype=out_dtype, device=buf.device)
    _launch(buf, m, MODE_STORE, p, off, off, x, x_row, out, x_row, out, x_row, xq)
    return out


def dequantize(buf: QuantBuffer, m: QuantMatrix, byte_offset: int, out: torch.Tensor) -> torch.Tensor:
    """Write the matrix at `byte_offset` into `out` [n_rows, n_cols] (fp16, bf16 or fp32)."""
    if out.shape != (m.n_rows, m.n_cols) or not out.is_contiguous():
        raise ValueError(f"dequantize needs a contiguous [{m.n_rows}, {m.n_cols}] output")
    grid = (triton_cdiv(m.n_rows, DEQUANT_ROWS), triton_cdiv(m.n_cols, 256))
    _dequant_kernel[grid](buf.bytes, buf.words, byte_offset, buf.bytes, out, m.n_rows, m.n_cols, m.row_bytes,
                          QTYPE=m.ggml_type, ROWS=DEQUANT_ROWS, GATHER=False, num_warps=4)
    return out


def dequantize_rows(buf: QuantBuffer, m: QuantMatrix, byte_offset: int, rows: torch.Tensor,
                    out: torch.Tensor) -> torch.Tensor:
    """out[t] = row rows[t] of the matrix at `byte_offset` (an embedding lookup): rows [T]
    integer device tensor (not checked against n_rows: no host sync), out [T, n_cols]."""
    if rows.dim() != 1 or out.shape != (rows.shape[0], m.n_cols) or not out.is_contiguous():
        raise ValueError(f"dequantize_rows needs rows [T] and a contiguous [T, {m.n_cols}] output")
    if rows.shape[0] == 0:
        return out
    grid = (triton_cdiv(rows.shape[0], DEQUANT_ROWS), triton_cdiv(m.n_cols, 256))
    _dequant_kernel[grid](buf.bytes, buf.words, byte_offset, rows, out, rows.shape[0], m.n_cols, m.row_bytes,
                          QTYPE=m.ggml_type, ROWS=DEQUANT_ROWS, GATHER=True, num_warps=4)
    return out
