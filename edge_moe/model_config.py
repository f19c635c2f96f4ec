"""The typed configuration of an MoE model, read from llama.cpp GGUF metadata.

What llama.cpp hard-codes per architecture (norm type, whether the top-k
weights are renormalised, rope layout, biases) is in `ARCH_TRAITS`, taken from
llama.cpp's graph builders (src/models/*.cpp of the vendored llama.cpp); GGUF
keys override it where llama.cpp reads a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from edge_moe.errors import ModelFormatError, UnsupportedModelError
from edge_moe.gguf_file import GGUFFile


class NormKind(str, Enum):
    RMS = "rms"
    RMS_BIAS = "rms_bias"  # phimoe in llama.cpp: RMS norm, then the (LayerNorm) bias


class RopeLayout(str, Enum):
    NORM = "norm"  # adjacent pairs (llama; the converter permutes Q/K rows for it)
    NEOX = "neox"  # first half / second half


class GatingFunc(str, Enum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


# llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE values as stored in `<arch>.expert_gating_func`
_GATING_IDS = {1: GatingFunc.SOFTMAX, 2: GatingFunc.SIGMOID}


class QKNorm(str, Enum):
    NONE = "none"
    PER_HEAD = "per_head"  # qwen3moe: RMSNorm over head_dim
    FULL = "full"  # olmoe: RMSNorm over the whole projection


@dataclass(frozen=True)
class ArchTraits:
    norm: NormKind
    rope: RopeLayout
    qk_norm: QKNorm
    normalize_topk: bool  # renormalise the selected experts' weights to sum to 1
    qkv_bias: bool
    out_bias: bool  # attention output and LM head biases (phimoe)
    shared_expert_gate: bool  # qwen2moe: sigmoid gate on the shared expert


ARCH_TRAITS: dict[str, ArchTraits] = {
    # Mixtral (llama.cpp runs it as "llama" with experts)
    "llama": ArchTraits(NormKind.RMS, RopeLayout.NORM, QKNorm.NONE, True, False, False, False),
    # Phi-3.5-MoE: biases everywhere; llama.cpp uses RMS norms (not LayerNorm) and softmax top-k
    # renormalised (not sparsemixer): see edge_moe/archs/phimoe.py
    "phimoe": ArchTraits(NormKind.RMS_BIAS, RopeLayout.NEOX, QKNorm.NONE, True, True, True, False),
    # Qwen1.5/2-MoE: shared expert behind a sigmoid gate; top-k weights not renormalised
    "qwen2moe": ArchTraits(NormKind.RMS, RopeLayout.NEOX, QKNorm.NONE, False, True, False, True),
    "qwen3moe": ArchTraits(NormKind.RMS, RopeLayout.NEOX, QKNorm.PER_HEAD, True, False, False, False),
    "olmoe": ArchTraits(NormKind.RMS, RopeLayout.NEOX, QKNorm.FULL, False, False, False, False),
}
SUPPORTED_ARCHS = tuple(ARCH_TRAITS)


@dataclass(frozen=True)
class MoEConfig:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int  # key/value length per head
    n_vocab: int
    n_ctx_train: int
    rope_freq_base: float
    rope_dim: int
    norm_eps: float
    n_expert: int
    n_expert_used: int
    n_ff_expert: int  # intermediate size of one routed expert
    n_shared_expert: int  # 0 when the model has none
    n_ff_shared: int  # intermediate size of the shared expert (0 when none)
    normalize_topk: bool
    expert_weights_scale: float
    gating: GatingFunc
    traits: ArchTraits

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_vocab", "n_expert", "n_ff_expert"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.n_expert_used <= self.n_expert:
            problems.append(f"expert_used_count {self.n_expert_used} must be in 1..expert_count {self.n_expert}")
        if self.n_head_kv > 0 and self.n_head % self.n_head_kv:
            problems.append(f"head_count {self.n_head} is not a multiple of head_count_kv {self.n_head_kv}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def expert_shape(self) -> tuple[int, int]:
        """(n_embd, n_ff_expert): gate/up map n_embd -> n_ff, down maps back."""
        return self.n_embd, self.n_ff_expert


def _uniform_int(gguf: GGUFFile, key: str, default: int | None = None) -> int:
    """An int key that llama.cpp also accepts as a per-layer array; we require it uniform."""
    entry = gguf.metadata.get(key)
    if entry is None:
        if default is None:
            raise ModelFormatError(gguf.path, f"missing metadata key {key!r}")
        return default
    if isinstance(entry.value, np.ndarray):
        arr = gguf.get(key, np.ndarray)
        if arr.size == 0 or not np.all(arr == arr[0]):
            raise UnsupportedModelError(gguf.path, f"{key!r} varies per layer ({arr.tolist()}), not supported")
        return int(arr[0])
    return int(gguf.get(key, int))


def read_config(gguf: GGUFFile) -> MoEConfig:
    """Parse and validate the model configuration; refuse architectures we do not run."""
    arch = gguf.get("general.architecture", str)
    if arch not in ARCH_TRAITS:
        raise UnsupportedModelError(gguf.path, f"architecture {arch!r} is not supported "
                                               f"(edge-moe runs MoE models of: {', '.join(SUPPORTED_ARCHS)})")
    traits = ARCH_TRAITS[arch]

    def key(name: str) -> str:
        return f"{arch}.{name}"

    n_expert = gguf.get(key("expert_count"), int, 0)
    if n_expert == 0:
        raise UnsupportedModelError(gguf.path, f"{arch!r} model without experts ({key('expert_count')} absent "
                                               "or 0): a dense model, not a Mixture-of-Experts")
    n_embd = gguf.get(key("embedding_length"), int)
    n_head = _uniform_int(gguf, key("attention.head_count"))
    n_head_kv = _uniform_int(gguf, key("attention.head_count_kv"), default=n_head)
    head_dim = gguf.get(key("attention.key_length"), int, n_embd // max(n_head, 1))
    eps_key = key("attention.layer_norm_rms_epsilon")
    if eps_key not in gguf.metadata:
        eps_key = key("attention.layer_norm_epsilon")
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    n_vocab = gguf.get(key("vocab_size"), int, len(tokens.value) if tokens is not None else 0)

    # Expert sizes come from the tensors themselves, cross-checked against the keys.
    gate_exps = gguf.tensor("blk.0.ffn_gate_exps.weight")
    if len(gate_exps.shape) != 3 or gate_exps.shape[0] != n_embd or gate_exps.shape[2] != n_expert:
        raise ModelFormatError(gguf.path, f"blk.0.ffn_gate_exps.weight has shape {list(gate_exps.shape)}, "
                                          f"expected [{n_embd}, n_ff, {n_expert}]")
    n_ff_expert = gate_exps.shape[1]
    ff_key = key("expert_feed_forward_length") if key("expert_feed_forward_length") in gguf.metadata \
        else key("feed_forward_length")
    declared_ff = gguf.get(ff_key, int, n_ff_expert) if ff_key in gguf.metadata and not isinstance(
        gguf.metadata[ff_key].value, np.ndarray) else n_ff_expert
    if declared_ff != n_ff_expert:
        raise ModelFormatError(gguf.path, f"{ff_key} = {declared_ff} disagrees with expert tensors ({n_ff_expert})")

    n_ff_shared = 0
    if "blk.0.ffn_gate_shexp.weight" in gguf.tensors:
        n_ff_shared = gguf.tensor("blk.0.ffn_gate_shexp.weight").shape[1]
    n_shared = gguf.get(key("expert_shared_count"), int, 1 if n_ff_shared else 0)

    gating_id = gguf.get(key("expert_gating_func"), int, 1)
    if gating_id not in _GATING_IDS:
        raise UnsupportedModelError(gguf.path, f"{key('expert_gating_func')} = {gating_id} is not supported")
    try:
        return MoEConfig(
            arch=arch,
            n_layer=gguf.get(key("block_count"), int),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_vocab=n_vocab,
            n_ctx_train=gguf.get(key("context_length"), int, 4096),
            rope_freq_base=gguf.get(key("rope.freq_base"), float, 10000.0),
            rope_dim=gguf.get(key("rope.dimension_count"), int, head_dim),
            norm_eps=gguf.get(eps_key, float, 1e-5),
            n_expert=n_expert,
            n_expert_used=gguf.get(key("expert_used_count"), int),
            n_ff_expert=n_ff_expert,
            n_shared_expert=n_shared,
            n_ff_shared=n_ff_shared,
            normalize_topk=gguf.get(key("expert_weights_norm"), bool, traits.normalize_topk),
            expert_weights_scale=gguf.get(key("expert_weights_scale"), float, 1.0) or 1.0,
            gating=_GATING_IDS[gating_id],
            traits=traits,
        )
    except ValueError as e:
        raise ModelFormatError(gguf.path, f"inconsistent model configuration: {e}") from None
