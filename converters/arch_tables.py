"""HF -> llama.cpp names and metadata, one table per model family.

Tensor names follow llama.cpp's (gguf-py `constants.py` / `tensor_mapping.py`);
per-family facts follow llama.cpp's loaders in src/models/*.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Tensors outside the layers, common to all families: HF name -> GGUF name.
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.norm.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
    "lm_head.bias": "output.bias",
}

_ATTN = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_BIASES = {
    "input_layernorm.bias": "attn_norm.bias",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.bias": "ffn_norm.bias",
}
_QK_NORM = {"self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
_MIXTRAL_EXPERTS = {"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight"}
_QWEN_EXPERTS = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight",
                 "down_proj": "ffn_down_exps.weight"}


@dataclass(frozen=True)
class ArchSpec:
    hf_architecture: str
    gguf_arch: str
    layer_tensors: dict[str, str]  # HF suffix after "model.layers.{i}." -> GGUF suffix after "blk.{i}."
    router: str  # HF suffix of the router weight
    expert_prefix: str  # HF suffix before ".{e}.{kind}.weight"
    expert_kinds: dict[str, str]  # HF kind -> stacked GGUF suffix
    permute_qk: bool  # llama rope layout: reorder Q/K rows as llama.cpp's converter does
    bpe_pre: str  # llama.cpp pre-tokenizer name when the tokenizer is byte-level BPE
    optional: frozenset[str] = frozenset()  # layer tensors a checkpoint may lack (e.g. biases)


ARCH_SPECS: dict[str, ArchSpec] = {
    "MixtralForCausalLM": ArchSpec(
        "MixtralForCausalLM", "llama", dict(_ATTN), "block_sparse_moe.gate.weight",
        "block_sparse_moe.experts", _MIXTRAL_EXPERTS, permute_qk=True, bpe_pre="default"),
    "PhimoeForCausalLM": ArchSpec(
        "PhimoeForCausalLM", "phimoe", {**_ATTN, **_BIASES}, "block_sparse_moe.gate.weight",
        "block_sparse_moe.experts", _MIXTRAL_EXPERTS, permute_qk=False, bpe_pre="default"),
    "Qwen2MoeForCausalLM": ArchSpec(
        "Qwen2MoeForCausalLM", "qwen2moe",
        {**_ATTN, **{k: v for k, v in _BIASES.items() if k.startswith("self_attn.") and "o_proj" not in k},
         "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
         "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
         "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
         "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight"},
        "mlp.gate.weight", "mlp.experts", _QWEN_EXPERTS, permute_qk=False, bpe_pre="qwen2"),
    "Qwen3MoeForCausalLM": ArchSpec(
        "Qwen3MoeForCausalLM", "qwen3moe", {**_ATTN, **_QK_NORM}, "mlp.gate.weight", "mlp.experts",
        _QWEN_EXPERTS, permute_qk=False, bpe_pre="qwen2"),
    "OlmoeForCausalLM": ArchSpec(
        "OlmoeForCausalLM", "olmoe", {**_ATTN, **_QK_NORM}, "mlp.gate.weight", "mlp.experts",
        _QWEN_EXPERTS, permute_qk=False, bpe_pre="olmo"),
}


def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in config and config[k] is not None:
            return config[k]
    return default


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters the converter needs, read once from config.json."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    n_expert: int
    n_expert_used: int
    n_ff_expert: int
    n_ff_dense: int
    n_ff_shared: int
    rope_theta: float
    norm_eps: float
    norm_topk_prob: bool | None

    @staticmethod
    def from_config(config: dict[str, Any]) -> "HParams":
        rope_params = config.get("rope_parameters") or {}
        n_embd = int(config["hidden_size"])
        n_head = int(config["num_attention_heads"])
        n_ff_dense = int(_first(config, "intermediate_size", default=0))
        return HParams(
            n_layer=int(config["num_hidden_layers"]),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(_first(config, "num_key_value_heads", default=n_head)),
            head_dim=int(_first(config, "head_dim", default=n_embd // n_head)),
            n_vocab=int(config["vocab_size"]),
            n_ctx=int(_first(config, "max_position_embeddings", default=4096)),
            n_expert=int(_first(config, "num_local_experts", "num_experts")),
            n_expert_used=int(_first(config, "num_experts_per_tok")),
            n_ff_expert=int(_first(config, "moe_intermediate_size", "intermediate_size")),
            n_ff_dense=n_ff_dense,
            n_ff_shared=int(_first(config, "shared_expert_intermediate_size", default=0)),
            rope_theta=float(_first(config, "rope_theta", default=rope_params.get("rope_theta", 10000.0))),
            norm_eps=float(_first(config, "rms_norm_eps", "layer_norm_eps", default=1e-5)),
            norm_topk_prob=config.get("norm_topk_prob"),
        )


def write_hparams(writer: Any, spec: ArchSpec, hp: HParams, model_name: str) -> None:
    """The `<arch>.*` keys llama.cpp reads for this family."""
    w = writer
    w.add_name(model_name)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff_dense if spec.gguf_arch in ("qwen2moe", "qwen3moe") else hp.n_ff_expert)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.norm_eps)
    w.add_expert_count(hp.n_expert)
    w.add_expert_used_count(hp.n_expert_used)
    if spec.gguf_arch == "llama":
        w.add_vocab_size(hp.n_vocab)
        w.add_rope_dimension_count(hp.head_dim)
    else:
        w.add_rope_dimension_count(hp.head_dim)
    if spec.gguf_arch in ("qwen2moe", "qwen3moe"):
        w.add_expert_feed_forward_length(hp.n_ff_expert)
    if spec.gguf_arch == "qwen2moe" and hp.n_ff_shared:
        w.add_expert_shared_feed_forward_length(hp.n_ff_shared)
    if spec.gguf_arch == "qwen3moe" or hp.head_dim != hp.n_embd // hp.n_head:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
