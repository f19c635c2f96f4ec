"""The non-expert weights of a GGUF MoE model as torch tensors on the accelerator.

Embeddings, attention, norms, routers, shared experts and the LM head are small next to
the experts and are used by every token, so they all live on the accelerator. Quantized
matrices are dequantized once at load (gguf-py's reference dequantizer) into `dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

from edge_moe.errors import ModelFormatError
from edge_moe.gguf_file import GGUFFile, GGUFTensor
from edge_moe.model_config import MoEConfig


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
    wq: torch.Tensor  # [H*D, E]
    wk: torch.Tensor  # [KV*D, E]
    wv: torch.Tensor  # [KV*D, E]
    wo: torch.Tensor  # [E, H*D]
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    bo: torch.Tensor | None
    wqkv: torch.Tensor  # [(H + 2 KV) * D, E]: wq, wk, wv are views of it (one matmul for all three)
    bqkv: torch.Tensor | None
    q_norm: torch.Tensor | None  # [D] per head (qwen3moe) or [H*D] (olmoe)
    k_norm: torch.Tensor | None
    ffn_norm: torch.Tensor  # [E]
    ffn_norm_b: torch.Tensor | None
    router: torch.Tensor  # [n_expert, E]
    shexp_gate: torch.Tensor | None  # [F_sh, E]
    shexp_up: torch.Tensor | None  # [F_sh, E]
    shexp_down: torch.Tensor | None  # [E, F_sh]
    shexp_gate_inp: torch.Tensor | None  # [E] (sigmoid gate of the shared expert)


@dataclass
class DenseWeights:
    tok_embd: torch.Tensor  # [V, E]
    output_norm: torch.Tensor  # [E]
    output_norm_b: torch.Tensor | None
    output: torch.Tensor  # [V, E] (the embedding matrix when the model ties them)
    output_b: torch.Tensor | None
    layers: list[LayerWeights]


def load_dense_weights(gguf: GGUFFile, cfg: MoEConfig, device: torch.device, dtype: torch.dtype) -> DenseWeights:
    def get(name: str, required: bool = True) -> torch.Tensor | None:
        if name not in gguf.tensors:
            if required:
                gguf.tensor(name)  # raises the ModelFormatError naming the file and tensor
            return None
        arr = tensor_to_numpy(gguf.tensors[name])
        # a copy: F32 tensors are read-only views of the mmap, which torch must not alias
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True)).to(device=device, dtype=dtype)

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

    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        gate_inp = get(p + "ffn_gate_inp_shexp.weight", required=False)
        wqkv, wq, wk, wv = fused(must(p + "attn_q.weight"), must(p + "attn_k.weight"), must(p + "attn_v.weight"))
        bq, bk, bv = (get(p + f"attn_{x}.bias", False) for x in "qkv")
        if (bq is None) != (bk is None) or (bq is None) != (bv is None):
            raise ModelFormatError(gguf.path, f"layer {i} has biases on some of attn_q/k/v but not all")
        bqkv, bq, bk, bv = fused(bq, bk, bv)
        layers.append(LayerWeights(
            attn_norm=must(p + "attn_norm.weight"), attn_norm_b=get(p + "attn_norm.bias", False),
            wq=wq, wk=wk, wv=wv, wo=must(p + "attn_output.weight"), bq=bq, bk=bk, bv=bv,
            bo=get(p + "attn_output.bias", False), wqkv=wqkv, bqkv=bqkv,
            q_norm=get(p + "attn_q_norm.weight", False), k_norm=get(p + "attn_k_norm.weight", False),
            ffn_norm=must(p + "ffn_norm.weight"), ffn_norm_b=get(p + "ffn_norm.bias", False),
            router=must(p + "ffn_gate_inp.weight"),
            shexp_gate=get(p + "ffn_gate_shexp.weight", False), shexp_up=get(p + "ffn_up_shexp.weight", False),
            shexp_down=get(p + "ffn_down_shexp.weight", False),
            shexp_gate_inp=gate_inp.reshape(-1) if gate_inp is not None else None,
        ))
    tok_embd = must("token_embd.weight")
    output = get("output.weight", required=False)
    return DenseWeights(
        tok_embd=tok_embd, output_norm=must("output_norm.weight"), output_norm_b=get("output_norm.bias", False),
        output=output if output is not None else tok_embd, output_b=get("output.bias", False), layers=layers,
    )
