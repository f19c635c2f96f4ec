"""The non-expert weights of a GGUF MoE model on the accelerator, and what they take there.

Embeddings, attention, norms, routers, shared experts and the LM head are small next to
the experts and are used by every token, so they all live on the accelerator, in one of two
formats (`ExecutorConfig.dense_format`):

- "fp16": every tensor dequantized once at load (gguf-py's reference dequantizer) into the
  compute dtype (fp16 on CUDA, fp32 on the CPU device).
- "quantized": the big matrices (attention q/k/v/output, the LM head, the token embedding,
  shared-expert gate/up/down) stay in their GGUF block formats, back to back in one uint8
  device buffer (each run 256-byte aligned); q, k and v of a layer are one run when they
  share a type (block formats are row-independent, so their rows concatenate into wqkv).
  Products go through edge_moe/dense_linear.py. Norms, biases and routers (tiny, and the
  routers must stay exact) and matrices already in a float type are kept as in "fp16".
  At Q4_0 this takes ~3.5x less VRAM than fp16, which the expert cache gets instead.

"auto" is "quantized" on CUDA when the Triton kernels read every block type among the big
matrices (quant_ops.SUPPORTED_TYPES) and at least one of them is a block type, else "fp16".
`dense_device_bytes` says what either format takes (the planner's VRAM accounting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

from edge_moe.dense_linear import DenseQuantStore, QuantWeight, RowStack, Weight
from edge_moe.errors import ModelFormatError
from edge_moe.gguf_file import GGUFFile, GGUFTensor
from edge_moe.model_config import MoEConfig

DENSE_FORMATS = ("auto", "fp16", "quantized")
QUANT_ALIGNMENT = 256  # bytes; each run of blocks starts at a multiple (kernels read 16-bit words)
# The dequantize path (prefill) of the LM head and the tied embedding works in row chunks of
# at most this many weights when no layer matrix is larger (8 MiB of fp16)
HEAD_CHUNK_ELEMS = 1 << 22
_FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})
_LAYER_GROUPS = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate_shexp",), ("ffn_up_shexp",),
                 ("ffn_down_shexp",))


def tensor_to_numpy(t: GGUFTensor) -> np.ndarray:
    """float32 array in numpy order (rows last) of any GGUF tensor type."""
    shape = tuple(reversed(t.shape))
    if t.ggml_type == T.F32:
        return t.data.view(np.float32).reshape(shape)
    if t.ggml_type == T.F16:
        return t.data.view(np.float16).reshape(shape).astype(np.float32)
    rows = t.data.reshape(-1, t.row_bytes())
    return dequantize(rows, t.ggml_type).reshape(shape).astype(np.float32, copy=False)


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # [E]
    attn_norm_b: torch.Tensor | None
    wq: Weight  # [H*D, E]
    wk: Weight  # [KV*D, E]
    wv: Weight  # [KV*D, E]
    wo: Weight  # [E, H*D]
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    bo: torch.Tensor | None
    wqkv: Weight  # [(H + 2 KV) * D, E]: wq, wk, wv are views of it (one matmul for all three)
    bqkv: torch.Tensor | None
    q_norm: torch.Tensor | None  # [D] per head (qwen3moe) or [H*D] (olmoe)
    k_norm: torch.Tensor | None
    ffn_norm: torch.Tensor  # [E]
    ffn_norm_b: torch.Tensor | None
    router: torch.Tensor  # [n_expert, E]
    shexp_gate: Weight | None  # [F_sh, E]
    shexp_up: Weight | None  # [F_sh, E]
    shexp_down: Weight | None  # [E, F_sh]
    shexp_gate_inp: torch.Tensor | None  # [E] (sigmoid gate of the shared expert)


@dataclass
class DenseWeights:
    tok_embd: torch.Tensor | QuantWeight  # [V, E]
    output_norm: torch.Tensor  # [E]
    output_norm_b: torch.Tensor | None
    output: Weight  # [V, E] (the embedding matrix when the model ties them)
    output_b: torch.Tensor | None
    layers: list[LayerWeights]
    format: str = "fp16"  # "fp16" | "quantized" (module docstring)
    quant: DenseQuantStore | None = None  # the block bytes of the quantized matrices


# ---- which matrices stay quantized, and where --------------------------------------------

def _matrix_groups(gguf: GGUFFile, cfg: MoEConfig) -> list[list[GGUFTensor]]:
    """The big matrices the "quantized" format may keep as blocks, grouped as stored (q, k, v
    of a layer together); absent tensors left out."""
    names = [[f"blk.{il}.{n}.weight" for n in group] for il in range(cfg.n_layer) for group in _LAYER_GROUPS]
    names += [["token_embd.weight"], ["output.weight"]]
    return [[gguf.tensors[n] for n in group if n in gguf.tensors] for group in names]


def _is_blocks(t: GGUFTensor) -> bool:
    return t.ggml_type not in _FLOAT_TYPES


def _kernel_types() -> frozenset[int]:
    try:
        from edge_moe.quant_ops import SUPPORTED_TYPES
    except ImportError:  # no Triton: no kernels
        return frozenset()
    return SUPPORTED_TYPES


def choose_dense_format(choice: str, device_type: str, gguf: GGUFFile, cfg: MoEConfig) -> str:
    """"fp16" or "quantized" for a `dense_format` choice (module docstring) on a device type."""
    if choice not in DENSE_FORMATS:
        raise ValueError(f"dense_format must be one of {', '.join(DENSE_FORMATS)}, got {choice!r}")
    if choice == "fp16":
        return choice
    blocks = {int(t.ggml_type) for g in _matrix_groups(gguf, cfg) for t in g if _is_blocks(t)}
    missing = blocks - _kernel_types()
    if choice == "quantized":
        if missing:
            names = ", ".join(sorted(T(t).name for t in missing))
            raise ValueError(f"dense_format 'quantized': no GPU kernel reads {names} (of {gguf.path.name})")
        if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("dense_format 'quantized' off CUDA runs the Triton kernels in Triton's interpreter: "
                             "set TRITON_INTERPRET=1 before starting (slow; for tests)")
        return choice
    return "quantized" if device_type == "cuda" and blocks and not missing else "fp16"


@dataclass(frozen=True)
class QuantLayout:
    offsets: dict[str, int]  # GGUF tensor name -> byte offset in the buffer (block-format tensors only)
    nbytes: int  # the buffer
    scratch_elems: int  # the dequantize path's scratch (compute dtype)


def quant_layout(gguf: GGUFFile, cfg: MoEConfig) -> QuantLayout:
    """Where each block-format big matrix goes in the "quantized" buffer: groups whose tensors
    share one type back to back (q, k, v -> one wqkv run), every run aligned."""
    offsets: dict[str, int] = {}
    at, scratch, head = 0, 0, 0

    def align(n: int) -> int:
        return -(-n // QUANT_ALIGNMENT) * QUANT_ALIGNMENT

    for group in _matrix_groups(gguf, cfg):
        kept = [t for t in group if _is_blocks(t)]
        if not kept:
            continue
        together = len(kept) == len(group) and len({t.ggml_type for t in kept}) == 1
        for t in kept:
            if not together or t is kept[0]:
                at = align(at)
            offsets[t.name] = at
            at += t.nbytes
        big = sum(t.n_elements for t in kept) if together else max(t.n_elements for t in kept)
        if group[0].name.startswith("blk."):
            scratch = max(scratch, big)
        elif group[0].name == "output.weight" or "output.weight" not in gguf.tensors:  # used by the head
            head = max(head, min(big, HEAD_CHUNK_ELEMS), group[0].shape[0])
    return QuantLayout(offsets, align(at), max(scratch, head))


def dense_device_bytes(gguf: GGUFFile, cfg: MoEConfig, fmt: str, elem: int) -> int:
    """Accelerator bytes of the non-expert weights in format `fmt` ("fp16" or "quantized") with
    an `elem`-byte compute dtype: what `load_dense_weights` allocates, up to small tables."""
    total = sum(t.n_elements for name, t in gguf.tensors.items() if "_exps." not in name) * elem
    if fmt == "quantized":
        lay = quant_layout(gguf, cfg)
        total += lay.nbytes + lay.scratch_elems * elem - sum(gguf.tensors[n].n_elements for n in lay.offsets) * elem
    return total


# ---- loading ---------------------------------------------------------------------------

def load_dense_weights(gguf: GGUFFile, cfg: MoEConfig, device: torch.device, dtype: torch.dtype,
                       fmt: str = "fp16") -> DenseWeights:
    """The weights in format `fmt` ("fp16" or "quantized", see `choose_dense_format`)."""
    if fmt not in ("fp16", "quantized"):
        raise ValueError(f"load_dense_weights takes format fp16 or quantized, got {fmt!r}")
    store: DenseQuantStore | None = None
    offsets: dict[str, int] = {}  # block-format tensors -> byte offset in the store
    if fmt == "quantized":
        lay = quant_layout(gguf, cfg)
        offsets = lay.offsets
        data = torch.zeros(lay.nbytes, dtype=torch.uint8, device=device)
        for name, off in offsets.items():
            t = gguf.tensors[name]
            data[off:off + t.nbytes].copy_(torch.from_numpy(np.array(t.data, copy=True)))
        store = DenseQuantStore(data, list(offsets.values()), lay.scratch_elems, dtype)
    index = {name: i for i, name in enumerate(offsets)}  # row of the store's pair_offsets table

    def get(name: str, required: bool = True) -> torch.Tensor | None:
        if name not in gguf.tensors:
            if required:
                gguf.tensor(name)  # raises the ModelFormatError naming the file and tensor
            return None
        arr = tensor_to_numpy(gguf.tensors[name])
        # a copy: F32 tensors are read-only views of the mmap, which torch must not alias
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True)).to(device=device, dtype=dtype)

    def quant(name: str, n_rows: int | None = None) -> QuantWeight:
        """The blocks of `name` (n_rows: more rows, those of the tensors stored after it)."""
        from edge_moe.quant_ops import QuantMatrix

        assert store is not None
        t = gguf.tensors[name]
        rows = t.n_elements // t.shape[0] if n_rows is None else n_rows
        return QuantWeight(store, index[name], offsets[name], QuantMatrix(int(t.ggml_type), rows, t.shape[0]))

    def matrix(name: str, required: bool = True) -> Weight | None:
        return quant(name) if name in offsets else get(name, required)

    def must(name: str) -> torch.Tensor:
        t = get(name)
        assert t is not None
        return t

    def fused(*parts: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """The parts concatenated along rows, and each part as a view of the concatenation."""
        if any(t is None for t in parts):
            return (None,) * (len(parts) + 1)
        whole = torch.cat(parts)  # type: ignore[arg-type]
        return (whole, *torch.split(whole, [t.shape[0] for t in parts]))  # type: ignore[union-attr]

    def fused_qkv(p: str) -> tuple[Weight, ...]:
        names = [p + f"attn_{x}.weight" for x in "qkv"]
        for n in names:
            if n not in gguf.tensors:
                gguf.tensor(n)  # raises
        parts = [matrix(n) for n in names]
        if all(isinstance(w, torch.Tensor) for w in parts):
            return fused(*parts)  # type: ignore[arg-type]
        ts = [gguf.tensors[n] for n in names]
        one_run = (all(n in offsets for n in names) and len({t.ggml_type for t in ts}) == 1
                   and all(offsets[b.name] == offsets[a.name] + a.nbytes for a, b in zip(ts, ts[1:])))
        if one_run:  # raw row bytes of q, k, v back to back: one [(H + 2 KV) * D, E] matrix
            return (quant(names[0], sum(t.n_elements // t.shape[0] for t in ts)), *parts)  # type: ignore[return-value]
        return (RowStack(tuple(parts)), *parts)  # type: ignore[arg-type]

    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        gate_inp = get(p + "ffn_gate_inp_shexp.weight", required=False)
        wqkv, wq, wk, wv = fused_qkv(p)
        bq, bk, bv = (get(p + f"attn_{x}.bias", False) for x in "qkv")
        if (bq is None) != (bk is None) or (bq is None) != (bv is None):
            raise ModelFormatError(gguf.path, f"layer {i} has biases on some of attn_q/k/v but not all")
        bqkv, bq, bk, bv = fused(bq, bk, bv)
        layers.append(LayerWeights(
            attn_norm=must(p + "attn_norm.weight"), attn_norm_b=get(p + "attn_norm.bias", False),
            wq=wq, wk=wk, wv=wv, wo=matrix(p + "attn_output.weight"), bq=bq, bk=bk, bv=bv,
            bo=get(p + "attn_output.bias", False), wqkv=wqkv, bqkv=bqkv,
            q_norm=get(p + "attn_q_norm.weight", False), k_norm=get(p + "attn_k_norm.weight", False),
            ffn_norm=must(p + "ffn_norm.weight"), ffn_norm_b=get(p + "ffn_norm.bias", False),
            router=must(p + "ffn_gate_inp.weight"),
            shexp_gate=matrix(p + "ffn_gate_shexp.weight", False), shexp_up=matrix(p + "ffn_up_shexp.weight", False),
            shexp_down=matrix(p + "ffn_down_shexp.weight", False),
            shexp_gate_inp=gate_inp.reshape(-1) if gate_inp is not None else None,
        ))
    tok_embd = matrix("token_embd.weight")
    output = matrix("output.weight", required=False)
    return DenseWeights(
        tok_embd=tok_embd, output_norm=must("output_norm.weight"), output_norm_b=get("output_norm.bias", False),
        output=output if output is not None else tok_embd, output_b=get("output.bias", False), layers=layers,
        format=fmt, quant=store,
    )
