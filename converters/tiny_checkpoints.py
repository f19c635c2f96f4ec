"""Deterministic tiny random MoE checkpoints, laid out like real Hugging Face hub checkpoints.

``make_tiny_checkpoint(arch, out_dir)`` writes ``config.json`` (hub style: ``rope_theta`` and
``rope_scaling`` at the top level, as transformers 4.x wrote them), ``generation_config.json``,
the family's real tokenizer files (see ``tiny_tokenizers``) and safetensors weights in the hub's
per-expert tensor names (``block_sparse_moe.experts.{e}.w1`` for Mixtral/PhiMoE,
``mlp.experts.{e}.gate_proj`` for Qwen2/3-MoE and OLMoE), not transformers 5's fused in-memory
``experts.gate_up_proj``. The converters are tested against these directories and
``load_reference_model`` gives the transformers model to compare with.

Weights are drawn by name from one seeded ``torch.Generator``, scaled by fan-in so that
activations stay O(1) and router logits are spread (top-k choices vary across tokens).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edge_moe.converters import tiny_tokenizers

if TYPE_CHECKING:
    import transformers

TINY_ARCHS = ("mixtral", "phimoe", "qwen2moe", "qwen3moe", "olmoe")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_QK_ALIGN = 256  # K-quants (Q4_K, Q6_K...) quantize rows in blocks of 256


# ----------------------------------------------------------------------------- config


def tiny_config(
    arch: str,
    *,
    hidden_size: int = 256,
    moe_intermediate_size: int = 256,
    num_layers: int = 2,
    num_experts: int = 8,
    dtype: str = "float32",
    tokenizer_cache: Path | None = None,
) -> dict[str, Any]:
    """The ``config.json`` contents for a tiny ``arch`` model, in hub (transformers 4.x) style."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {TINY_ARCHS}")
    for name, value in (("hidden_size", hidden_size), ("moe_intermediate_size", moe_intermediate_size)):
        if value <= 0 or value % _QK_ALIGN:
            raise ValueError(f"{name}={value} must be a positive multiple of {_QK_ALIGN} (K-quant blocks)")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    tok = tiny_tokenizers.tokenizer_info(arch, tokenizer_cache)
    heads = 4
    cfg: dict[str, Any] = {
        "vocab_size": tok.vocab_size,  # exactly the tokenizer's: no padded rows
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,  # GQA
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "use_cache": True,
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "torch_dtype": dtype,
    }
    cfg.update(_FAMILY_CONFIG[arch](hidden_size, moe_intermediate_size, num_experts, heads))
    return dict(sorted(cfg.items()))


def _mixtral(h: int, moe_i: int, n_exp: int, heads: int) -> dict[str, Any]:
    return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "intermediate_size": moe_i,
            "num_local_experts": n_exp, "num_experts_per_tok": 2, "rope_theta": 1e6, "sliding_window": None,
            "router_aux_loss_coef": 0.02, "output_router_logits": False, "router_jitter_noise": 0.0}


def _phimoe(h: int, moe_i: int, n_exp: int, heads: int) -> dict[str, Any]:
    # Phi-3.5-MoE: biased attention and lm_head, LayerNorm (with bias) instead of RMSNorm.
    # Jitter values are the hub's: input jitter only acts in training, and router_jitter_noise
    # is sparsemixer's deterministic masking threshold in eval, so eval logits stay deterministic.
    return {"architectures": ["PhimoeForCausalLM"], "model_type": "phimoe", "intermediate_size": moe_i,
            "num_local_experts": n_exp, "num_experts_per_tok": 2, "rope_theta": 1e4, "sliding_window": None,
            "attention_bias": True, "lm_head_bias": True, "router_jitter_noise": 0.01,
            "input_jitter_noise": 0.01, "router_aux_loss_coef": 0.0, "output_router_logits": False}


def _qwen2moe(h: int, moe_i: int, n_exp: int, heads: int) -> dict[str, Any]:
    shared = 2 * moe_i  # Qwen1.5-MoE's shared expert is wider than a routed one
    return {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "intermediate_size": shared,
            "moe_intermediate_size": moe_i, "shared_expert_intermediate_size": shared, "num_experts": n_exp,
            "num_experts_per_tok": 4, "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "rope_theta": 1e6, "rms_norm_eps": 1e-6, "use_sliding_window": False, "sliding_window": 4096,
            "max_window_layers": 2, "router_aux_loss_coef": 0.001, "output_router_logits": False}


def _qwen3moe(h: int, moe_i: int, n_exp: int, heads: int) -> dict[str, Any]:
    # Like Qwen3-30B-A3B, heads * head_dim (512) != hidden_size: q_proj is wider than the model.
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "intermediate_size": 2 * moe_i,
            "moe_intermediate_size": moe_i, "head_dim": 2 * h // heads, "num_experts": n_exp,
            "num_experts_per_tok": 4, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "attention_bias": False, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": 2, "router_aux_loss_coef": 0.001,
            "output_router_logits": False}


def _olmoe(h: int, moe_i: int, n_exp: int, heads: int) -> dict[str, Any]:
    # OLMoE's q_norm/k_norm span all heads (width hidden_size); llama.cpp allocates k_norm as
    # n_embd, so only full multi-head attention converts. The hub model is MHA too.
    return {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "intermediate_size": moe_i,
            "num_key_value_heads": heads, "num_experts": n_exp, "num_experts_per_tok": 4,
            "norm_topk_prob": False, "attention_bias": False, "clip_qkv": None, "rope_theta": 1e4,
            "router_aux_loss_coef": 0.01, "output_router_logits": False}


_FAMILY_CONFIG = {"mixtral": _mixtral, "phimoe": _phimoe, "qwen2moe": _qwen2moe, "qwen3moe": _qwen3moe,
                  "olmoe": _olmoe}


def _generation_config(cfg: dict[str, Any], arch: str, tokenizer_cache: Path | None) -> dict[str, Any]:
    extra = tiny_tokenizers.tokenizer_info(arch, tokenizer_cache).extra_eos_token_ids
    eos = [cfg["eos_token_id"], *extra] if extra else cfg["eos_token_id"]
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": eos, "pad_token_id": cfg["pad_token_id"]}
    return {k: v for k, v in gen.items() if v is not None}


# ----------------------------------------------------------------------------- weights


def build_tiny_model(config: dict[str, Any], *, seed: int = 0) -> "transformers.PreTrainedModel":
    """The in-memory fp32 model for a ``tiny_config`` dict, weights drawn deterministically by ``seed``.

    With ``torch_dtype`` bfloat16 the weights are rounded to bf16 values (kept in fp32), so the
    checkpoint written from this model loads back to exactly the same numbers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "torch_dtype")}
    hf_config = AutoConfig.for_model(config["model_type"], **kwargs)
    with torch.random.fork_rng(devices=[]):  # from_config's throwaway init must not move the global RNG
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    round_to = _DTYPES[config["torch_dtype"]]
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            param.copy_(_init_tensor(name, tuple(param.shape), gen).to(round_to).to(torch.float32))
    return model.eval()


def _init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A random tensor for parameter ``name``, scaled for its role."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.endswith("bias"):
        return 0.05 * noise
    if "norm" in name:  # RMSNorm / LayerNorm / q_norm / k_norm gains: near 1, not exactly 1
        return 1.0 + 0.1 * noise
    if "embed_tokens" in name:
        return noise  # residual stream starts at RMS ~1
    fan_in = shape[-1]
    if name.endswith(("mlp.gate.weight", "mlp.router.weight")):
        # router logits with std ~6: varied top-k choices, and top-k margins wide enough that
        # numerical noise rarely flips an expert (tests skip the positions where it could)
        return (6.0 / fan_in**0.5) * noise
    if name.endswith("shared_expert_gate.weight"):
        return (1.0 / fan_in**0.5) * noise
    return (0.8 / fan_in**0.5) * noise  # projections: outputs with std ~0.8 for unit-RMS inputs


def legacy_state_dict(model: "transformers.PreTrainedModel", arch: str) -> dict[str, torch.Tensor]:
    """The model's weights under the hub's per-expert names (transformers 5 fuses experts in memory)."""
    moe = "block_sparse_moe" if arch in ("mixtral", "phimoe") else "mlp"
    names = ("w1", "w3", "w2") if moe == "block_sparse_moe" else ("gate_proj", "up_proj", "down_proj")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        m = re.fullmatch(r"(model\.layers\.\d+)\.mlp\.(.+)", key)
        if m is None:
            out[key] = tensor
            continue
        layer, rest = m.groups()
        if rest == "experts.gate_up_proj":  # [E, 2I, H]: gate rows first, then up rows
            inter = tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"{layer}.{moe}.experts.{e}.{names[0]}.weight"] = tensor[e, :inter]
                out[f"{layer}.{moe}.experts.{e}.{names[1]}.weight"] = tensor[e, inter:]
        elif rest == "experts.down_proj":  # [E, H, I]
            for e in range(tensor.shape[0]):
                out[f"{layer}.{moe}.experts.{e}.{names[2]}.weight"] = tensor[e]
        elif rest in ("gate.weight", "router.weight"):  # PhiMoE calls its router "router" in memory only
            out[f"{layer}.{moe}.gate.weight"] = tensor
        else:
            out[f"{layer}.{moe}.{rest}"] = tensor
    return out


# ----------------------------------------------------------------------------- writing


def make_tiny_checkpoint(
    arch: str,
    out_dir: Path,
    *,
    seed: int = 0,
    max_shard_bytes: int | None = None,
    hidden_size: int = 256,
    moe_intermediate_size: int = 256,
    num_layers: int = 2,
    num_experts: int = 8,
    dtype: str = "float32",
    tokenizer_cache: Path | None = None,
) -> Path:
    """Write a tiny random ``arch`` checkpoint into ``out_dir`` (created if needed) and return it.

    The same arguments give byte-identical files. ``max_shard_bytes`` splits the weights into
    ``model-0000k-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.
    """
    out_dir = Path(out_dir)
    cfg = tiny_config(arch, hidden_size=hidden_size, moe_intermediate_size=moe_intermediate_size,
                      num_layers=num_layers, num_experts=num_experts, dtype=dtype,
                      tokenizer_cache=tokenizer_cache)
    model = build_tiny_model(cfg, seed=seed)
    tensors = {k: v.to(_DTYPES[dtype]).contiguous() for k, v in legacy_state_dict(model, arch).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("model*.safetensors"), out_dir / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)  # a rerun with other sharding must not leave old shards behind
    _write_json(out_dir / "config.json", cfg)
    _write_json(out_dir / "generation_config.json", _generation_config(cfg, arch, tokenizer_cache))
    for path in tiny_tokenizers.tokenizer_files(arch, tokenizer_cache):
        shutil.copyfile(path, out_dir / path.name)
    _write_safetensors(out_dir, tensors, max_shard_bytes)
    return out_dir


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _natural_key(name: str) -> list[Any]:
    """Sort ``layers.2`` before ``layers.10`` and ``experts.9`` before ``experts.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _write_safetensors(out_dir: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> None:
    from safetensors.torch import save_file

    names = sorted(tensors, key=_natural_key)
    if max_shard_bytes is None:
        save_file({n: tensors[n] for n in names}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[str]] = [[]]
    size = 0
    for n in names:  # greedy in layer order, like transformers; a tensor larger than the limit gets its own shard
        nbytes = tensors[n].numel() * tensors[n].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in shard}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(out_dir / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


# ----------------------------------------------------------------------------- loading


def load_reference_model(model_dir: Path) -> "transformers.PreTrainedModel":
    """Load a checkpoint directory with transformers, offline, in fp32 and eval mode.

    Raises if any weight was left uninitialized, unused or reshaped: a silent partial load
    would make every comparison against this model meaningless.
    """
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"{model_dir}: incomplete load: {problems}")
    return model.eval()
