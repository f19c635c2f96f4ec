"""Matrix products with the non-expert weights, whichever form they are kept in.

A dense weight (edge_moe/dense_weights.py) is either a torch tensor [N, K] in the compute
dtype (dequantized at load) or a `QuantWeight`: the matrix's GGUF block bytes inside one
shared uint8 device buffer (`DenseQuantStore`), which takes 2-4x less VRAM than fp16. A
`RowStack` is several weights whose outputs are concatenated (q, k and v of different types).

    linear(x [T, K], w, bias) -> [T, N]:
      T <= MATVEC_MAX_TOKENS  the Triton matvec kernel reads the blocks once per token (one launch;
                              CUDA-graph safe: its offset and row tables are made at load)
      larger T                the matrix is dequantized into a reusable scratch in row chunks
                              and multiplied by torch (F.linear), chunk by chunk
    embedding(w, toks) -> [T, K]: rows of the token embedding (quantized: dequantized rows)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from edge_moe.quant_ops import QuantizedX, QuantMatrix

# Up to this many tokens, a quantized matrix is read once per token by the matvec kernel;
# more tokens dequantize it (in chunks) and use torch's matmul.
MATVEC_MAX_TOKENS = 4


class DenseQuantStore:
    """The block bytes of every quantized dense matrix (one flat device buffer), the per-token
    tables the matvec kernel reads, and the scratch the dequantize path writes into."""

    def __init__(self, data: torch.Tensor, offsets: list[int], scratch_elems: int, dtype: torch.dtype) -> None:
        from edge_moe.quant_ops import QuantBuffer

        dev = data.device
        self.buf = QuantBuffer(data)
        # pair p of a matvec launch is token p: it reads x[p] ...
        self.token_rows = torch.arange(MATVEC_MAX_TOKENS, dtype=torch.int32, device=dev)  # [MAX]
        # ... and the matrix at its byte offset, repeated per token: row i of this table is matrix i's
        self.pair_offsets = torch.tensor(offsets, dtype=torch.int64).reshape(-1, 1).repeat(
            1, MATVEC_MAX_TOKENS).to(dev)  # [n_matrices, MAX]
        self.scratch = torch.empty(scratch_elems, dtype=dtype, device=dev)  # dequantized row chunks

    @property
    def nbytes(self) -> int:
        return (self.buf.bytes.numel() + self.scratch.numel() * self.scratch.element_size()
                + self.pair_offsets.numel() * 8 + self.token_rows.numel() * 4)


@dataclass(frozen=True, eq=False)
class QuantWeight:
    """A matrix kept as its GGUF blocks at byte `offset` in `store`."""

    store: DenseQuantStore
    index: int  # row of store.pair_offsets holding `offset`
    offset: int
    m: "QuantMatrix"  # [n_rows, n_cols] and the ggml type

    @property
    def shape(self) -> tuple[int, int]:
        return (self.m.n_rows, self.m.n_cols)

    def rows(self, r0: int, n: int) -> tuple["QuantMatrix", int]:
        """Rows r0 .. r0 + n - 1 as a matrix of their own and its byte offset."""
        from edge_moe.quant_ops import QuantMatrix

        return QuantMatrix(self.m.ggml_type, n, self.m.n_cols), self.offset + r0 * self.m.row_bytes


@dataclass(frozen=True)
class RowStack:
    """Weights whose outputs are concatenated: [sum N_i, K] (q, k, v when their types differ)."""

    parts: tuple["Weight", ...]

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(p.shape[0] for p in self.parts), self.parts[0].shape[1])


Weight = torch.Tensor | QuantWeight | RowStack


def linear(x: torch.Tensor, w: Weight, bias: torch.Tensor | None = None, xq: "QuantizedX | None" = None,
           ) -> torch.Tensor:
    """x [T, K] @ w.T (+ bias) -> [T, N] in x's dtype. xq: quant_ops.quantize_x(x), made by
    the caller already (the matvec of an int8 format then skips its quantizing launch)."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, bias)
    if isinstance(w, RowStack):
        y = torch.cat([linear(x, p, xq=xq) for p in w.parts], dim=-1)  # [T, N]
    elif x.shape[0] <= MATVEC_MAX_TOKENS:
        y = _matvec(x, w, xq)
    else:
        y = _dequant_linear(x, w)
    return y if bias is None else y + bias


def _matvec(x: torch.Tensor, w: QuantWeight, xq: "QuantizedX | None" = None) -> torch.Tensor:
    from edge_moe.quant_ops import matvec_pairs

    s, t = w.store, x.shape[0]
    # [T, N] in x's dtype, written by the kernel (no cast kernel after it)
    return matvec_pairs(s.buf, w.m, s.pair_offsets[w.index, :t], x.contiguous(), s.token_rows[:t], x.dtype, xq)


def _dequant_linear(x: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """Dequantize w into the scratch, as many rows at a time as it holds, and multiply."""
    from edge_moe.quant_ops import dequantize

    s, (n, k) = w.store, w.shape
    chunk = min(n, s.scratch.numel() // k)  # rows per piece
    if chunk == n:
        return F.linear(x, dequantize(s.buf, w.m, w.offset, s.scratch[:n * k].view(n, k)))
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)  # [T, N]
    for r0 in range(0, n, chunk):
        m, offset = w.rows(r0, min(chunk, n - r0))
        piece = dequantize(s.buf, m, offset, s.scratch[:m.n_rows * k].view(m.n_rows, k))  # [r, K]
        out[:, r0:r0 + m.n_rows] = F.linear(x, piece)
    return out


def embedding(w: torch.Tensor | QuantWeight, toks: torch.Tensor | int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of the token embedding [V, E]: toks [T] (device, int) -> [T, E], or one host id -> [1, E]."""
    from edge_moe.quant_ops import dequantize, dequantize_rows

    if isinstance(w, torch.Tensor):
        return w[toks:toks + 1] if isinstance(toks, int) else w[toks]
    dev, e = w.store.buf.device, w.shape[1]
    if isinstance(toks, int):  # one row at a byte offset the host knows
        m, offset = w.rows(toks, 1)
        return dequantize(w.store.buf, m, offset, torch.empty((1, e), dtype=dtype, device=dev))
    return dequantize_rows(w.store.buf, w.m, w.offset, toks, torch.empty((toks.shape[0], e), dtype=dtype, device=dev))
