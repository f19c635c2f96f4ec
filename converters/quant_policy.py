"""Which ggml type each tensor gets, and encoding rows into it.

The rules follow llama.cpp's `convert_hf_to_gguf.py` so that our files match
its files tensor for tensor: 1-D tensors, norms, biases and routers stay F32;
every other matrix takes the output type, falling back to F16 when its rows do
not divide into the type's blocks. Encoding to F16, BF16 and the quantized
types goes through ggml's own `ggml_quantize_chunk`, the code llama.cpp uses.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType

from edge_moe.ggml_lib import quantize_rows

# --outtype spelling (as llama.cpp's converter and llama-quantize) -> (tensor type, file type)
OUTTYPES: dict[str, tuple[T, LlamaFileType]] = {
    "f32": (T.F32, LlamaFileType.ALL_F32),
    "f16": (T.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (T.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (T.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (T.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "q4_k": (T.Q4_K, LlamaFileType.MOSTLY_Q4_K_M),
    "q5_k": (T.Q5_K, LlamaFileType.MOSTLY_Q5_K_M),
    "q6_k": (T.Q6_K, LlamaFileType.MOSTLY_Q6_K),
}

_ALWAYS_F32_SUFFIXES = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "_norm.weight")


def tensor_type(gguf_name: str, shape: tuple[int, ...], outtype: T) -> T:
    """The ggml type of one output tensor; `shape` in numpy order (row length last)."""
    if len(shape) <= 1 or gguf_name.endswith(_ALWAYS_F32_SUFFIXES) or not gguf_name.endswith(".weight"):
        return T.F32
    block = GGML_QUANT_SIZES[outtype][0]
    if shape[-1] % block:
        return T.F16
    return outtype


def encode_rows(rows: np.ndarray, ggml_type: T) -> np.ndarray:
    """float32 rows [n, k] -> the bytes of `ggml_type` rows (uint8 [n, row_bytes])."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if ggml_type == T.F32:
        return rows.view(np.uint8)
    return quantize_rows(rows, ggml_type)


def nbytes_of(ggml_type: T, shape: tuple[int, ...]) -> int:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return n_rows * (shape[-1] // block) * type_size
