"""Reference implementations we did not write: transformers (fp32) and llama.cpp (llama-cpp-python).

Also the explicit handling of router near-ties: a token whose k-th and (k+1)-th
router logits are closer than the numerical noise of the comparison may pick a
different expert in the two implementations, which changes that token's logits
and, through attention, every later token's. We locate such positions from the
reference's router logits instead of loosening the tolerance for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class HFRun:
    logits: np.ndarray  # [T, V] float64
    router_logits: list[np.ndarray]  # per layer, [T, n_expert]
    top_k: int


def _llama_cpp_routing(router_logits: torch.Tensor, jitter_eps: float, training: bool,
                       top_k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's phimoe routing: softmax over all experts, top-k, renormalise.

    transformers' Phi-3.5-MoE uses `sparsemixer`, which weights experts differently;
    llama.cpp (src/models/phi3.cpp, MoE branch) does not implement it. We compare the
    converter against llama.cpp's definition and name the deviation in the README.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    return (weights / weights.sum(dim=-1, keepdim=True)).to(router_logits.dtype), experts


class _RMSNormWithBias(torch.nn.Module):
    """llama.cpp's phimoe norm (src/models/phi3.cpp: LLM_NORM_RMS with the LayerNorm's weight and bias)."""

    def __init__(self, ln: torch.nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight + self.bias


def _apply_llama_cpp_phimoe_semantics(model: torch.nn.Module) -> None:
    """Phi-3.5-MoE as llama.cpp runs it: RMS norms (keeping the bias) instead of LayerNorm.

    Together with `_llama_cpp_routing`, these are llama.cpp's two deviations from
    transformers for this family; `test_phimoe_deviation_is_named` measures their size.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.LayerNorm):
                setattr(parent, name, _RMSNormWithBias(child))


def hf_forward(model_dir: Path, tokens: list[int], llama_cpp_semantics: bool = True) -> HFRun:
    """transformers' fp32 forward; for phimoe, by default with llama.cpp's documented deviations."""
    from transformers.models.phimoe import modeling_phimoe

    from edge_moe.converters.tiny_checkpoints import load_reference_model

    model = load_reference_model(model_dir)
    is_phimoe = model.config.model_type == "phimoe"
    if is_phimoe and llama_cpp_semantics:
        _apply_llama_cpp_phimoe_semantics(model)
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        router = getattr(layer.mlp, "gate", None) or getattr(layer.mlp, "router")

        def hook(_m: torch.nn.Module, _inp: object, out: object, i: int = i) -> None:
            captured[i] = (out[0] if isinstance(out, tuple) else out).detach().reshape(len(tokens), -1)

        hooks.append(router.register_forward_hook(hook))
    saved = modeling_phimoe.sparsemixer
    if is_phimoe and llama_cpp_semantics:
        modeling_phimoe.sparsemixer = _llama_cpp_routing
    try:
        with torch.no_grad():
            out = model(torch.tensor([tokens]))
    finally:
        modeling_phimoe.sparsemixer = saved
        for h in hooks:
            h.remove()
    return HFRun(
        logits=out.logits[0].double().numpy(),
        router_logits=[captured[i].double().numpy() for i in range(len(captured))],
        top_k=int(model.config.num_experts_per_tok),
    )


_LLAMA_CPP_PROBE = """
import sys, numpy as np
from llama_cpp import Llama
path, out, tokens = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = Llama(model_path=path, n_ctx=max(64, len(tokens)), n_batch=len(tokens), logits_all=True,
            n_threads=2, n_gpu_layers=0, verbose=False)
llm.eval(tokens)
np.save(out, np.array(llm.scores[: len(tokens)], dtype=np.float64))
"""


def llama_cpp_logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits [T, V] for `tokens`, computed in a separate process: llama.cpp then
    owns a fresh process (no torch, no edge-moe ggml engine beside it), and a crash in it is
    reported as a test failure instead of taking the test session down."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        proc = subprocess.run([sys.executable, "-c", _LLAMA_CPP_PROBE, str(gguf_path), str(out),
                               ",".join(map(str, tokens))], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"llama.cpp failed (rc {proc.returncode}): {proc.stderr[-2000:]}"
        return np.load(out)


def topk_margins(router_logits: list[np.ndarray], k: int) -> np.ndarray:
    """[T] smallest gap, over layers, between the k-th and (k+1)-th router logit of each token."""
    gaps = []
    for logits in router_logits:
        top = -np.sort(-logits, axis=-1)
        gaps.append(top[:, k - 1] - top[:, k])
    return np.min(np.stack(gaps), axis=0)


def first_near_tie(run: HFRun, tau: float) -> int:
    """Index of the first token with a router near-tie (margin < tau), or T if none."""
    margins = topk_margins(run.router_logits, run.top_k)
    ties = np.nonzero(margins < tau)[0]
    return int(ties[0]) if len(ties) else len(margins)


def preround_checkpoint(src: Path, dst: Path, outtype: str) -> Path:
    """A copy of `src` whose weights are exactly what `outtype` can store.

    Every matrix the converter would quantize goes through ggml's quantizer and
    gguf-py's dequantizer (row by row, as the converter stores it). Converting the
    copy loses nothing more, so llama.cpp and transformers then see the same
    weights and differ only by ggml's quantisation of activations: a tight check
    of the quantized layout that the loose bound against the original cannot give.
    """
    import shutil

    from gguf.quants import dequantize
    from safetensors.numpy import load_file, save_file

    from edge_moe.converters.arch_tables import HParams
    from edge_moe.converters.hf_checkpoint import HFCheckpoint
    from edge_moe.converters.hf_to_gguf import plan_tensors, spec_for
    from edge_moe.converters.quant_policy import OUTTYPES, encode_rows

    shutil.copytree(src, dst)
    ckpt = HFCheckpoint(dst)
    plan = plan_tensors(ckpt, spec_for(ckpt), HParams.from_config(ckpt.config), OUTTYPES[outtype][0])
    type_of = {s: t.ggml_type for t in plan for s in t.sources}
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(f)
        for name, w in tensors.items():
            qtype = type_of[name]
            if w.ndim == 2 and qtype.name not in ("F32",):
                rows = w.astype(np.float32)
                tensors[name] = dequantize(encode_rows(rows, qtype), qtype).reshape(rows.shape).astype(w.dtype)
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


def x_as_int8_kernels_see(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """x [T, K] as the GPU matvec for `ggml_type` multiplies it: the int8 kernels (Q4_0, Q8_0,
    Q4_K, Q5_K, Q6_K) take x through ggml's Q8_0 quantization, as llama.cpp's CUDA path does
    (Q8_1 blocks of 32) and its CPU path for Q4_0/Q8_0 (for the K-quants its CPU path uses
    256-wide Q8_K blocks, a little coarser); the other kernels take it as it is."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    from edge_moe.ggml_lib import quantize_rows
    from edge_moe.quant_ops import INT8_TYPES

    if ggml_type not in INT8_TYPES:
        return x
    q8 = GGMLQuantizationType.Q8_0
    return dequantize(quantize_rows(np.ascontiguousarray(x, dtype=np.float32), q8), q8).reshape(x.shape).astype(np.float32)
