"""Tiny random MoE checkpoints: hub layout on disk, lossless transformers load, real tokenizers."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from edge_moe.converters import tiny_tokenizers
from edge_moe.converters.tiny_checkpoints import (
    TINY_ARCHS,
    build_tiny_model,
    load_reference_model,
    make_tiny_checkpoint,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world!  Two spaces,   three spaces; tabs\tand\nnewlines.",
    "def f(x):\n    return x * 42  # ok",
    "Unseen characters: Ω ж 🐍 ∑ and accents: café, naïve.",
    "Trailing spaces and a blank line  \n\n",
]
# transformers' Llama tokenizer (Metaspace, prepend_scheme="first") adds no dummy prefix to text
# that already starts with a space, so a leading space does not survive decode for the
# SentencePiece families, on hub Llama/Mistral tokenizers as well; byte-level BPE keeps it.
LEADING_SPACE = " leading space"
CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"}]
# What each family's chat template must produce for CHAT with a generation prompt.
CHAT_RENDERED = {
    "mixtral": "<s>[INST] Hi there [/INST]Hello.</s>[INST] Bye [/INST]",
    "phimoe": "<|user|>\nHi there<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n",
    "qwen2moe": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                 "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"),
    "olmoe": "<|endoftext|><|user|>\nHi there\n<|assistant|>\nHello.<|endoftext|>\n<|user|>\nBye\n<|assistant|>\n",
}
CHAT_RENDERED["qwen3moe"] = CHAT_RENDERED["qwen2moe"]
CHAT_SPECIALS = {"mixtral": [], "phimoe": ["<|user|>", "<|assistant|>", "<|end|>"],
                 "qwen2moe": ["<|im_start|>", "<|im_end|>"], "qwen3moe": ["<|im_start|>", "<|im_end|>"],
                 "olmoe": ["<|endoftext|>"]}


Loaded = tuple[torch.nn.Module, list[str]]


@pytest.fixture(scope="session")
def tok_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="session", params=TINY_ARCHS)
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tok_cache: Path) -> Path:
    arch = request.param
    return make_tiny_checkpoint(arch, tmp_path_factory.mktemp("ckpt") / arch, tokenizer_cache=tok_cache)


@pytest.fixture(scope="session")
def loaded(ckpt: Path) -> Loaded:
    """The checkpoint loaded by transformers once per arch, with the warnings the load logged."""
    with _transformers_warnings() as warnings:
        model = load_reference_model(ckpt)
    return model, warnings


def _arch(ckpt: Path) -> str:
    return ckpt.name  # the ckpt fixture names the directory after the arch


def _config(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())


def _disk_tensors(ckpt: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype) over all weight files of the checkpoint."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in sorted(ckpt.glob("model*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), sl.get_dtype())
    return out


def _expected_keys(arch: str, cfg: dict) -> set[str]:
    """The hub's tensor names for this family, written out independently of the module under test."""
    n_exp = cfg.get("num_local_experts") or cfg["num_experts"]
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        keys |= {p + f"self_attn.{n}_proj.weight" for n in "qkvo"}
        if arch in ("mixtral", "phimoe"):
            keys.add(p + "block_sparse_moe.gate.weight")
            keys |= {p + f"block_sparse_moe.experts.{e}.{w}.weight" for e in range(n_exp) for w in ("w1", "w2", "w3")}
        else:
            keys.add(p + "mlp.gate.weight")
            keys |= {p + f"mlp.experts.{e}.{w}_proj.weight" for e in range(n_exp) for w in ("gate", "up", "down")}
        if arch == "phimoe":
            keys |= {p + f"self_attn.{n}_proj.bias" for n in "qkvo"}
            keys |= {p + "input_layernorm.bias", p + "post_attention_layernorm.bias"}
        if arch == "qwen2moe":
            keys |= {p + f"self_attn.{n}_proj.bias" for n in "qkv"}
            keys |= {p + f"mlp.shared_expert.{w}_proj.weight" for w in ("gate", "up", "down")}
            keys.add(p + "mlp.shared_expert_gate.weight")
        if arch in ("qwen3moe", "olmoe"):
            keys |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
    if arch == "phimoe":
        keys |= {"model.norm.bias", "lm_head.bias"}
    return keys


@contextlib.contextmanager
def _transformers_warnings() -> Iterator[list[str]]:
    """Collect transformers log records at WARNING and above (load reports land there)."""
    from transformers.utils import logging as hf_logging

    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.unsqueeze(0)).logits[0]


def _token_ids(vocab: int, n: int = 32) -> torch.Tensor:
    return (torch.arange(n) * 37 + 5) % vocab


# ----------------------------------------------------------------------------- config and layout


def test_config_is_hub_style(ckpt: Path) -> None:
    arch, cfg = _arch(ckpt), _config(ckpt)
    family = {"mixtral": "MixtralForCausalLM", "phimoe": "PhimoeForCausalLM", "qwen2moe": "Qwen2MoeForCausalLM",
              "qwen3moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}[arch]
    assert cfg["architectures"] == [family]
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 256
    assert cfg["tie_word_embeddings"] is False and cfg["rope_scaling"] is None and cfg["rope_theta"] > 0
    assert cfg["max_position_embeddings"] >= 512
    assert (cfg.get("num_local_experts") or cfg["num_experts"]) == 8
    assert 2 <= cfg["num_experts_per_tok"] <= 4
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        assert cfg.get(key, 256) % 256 == 0, key
    if arch != "olmoe":
        assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA


def test_weights_use_hub_per_expert_names(ckpt: Path) -> None:
    arch, cfg = _arch(ckpt), _config(ckpt)
    on_disk = _disk_tensors(ckpt)
    assert set(on_disk) == _expected_keys(arch, cfg)
    assert {dtype for _, dtype in on_disk.values()} == {"F32"}
    h, inter = cfg["hidden_size"], cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    moe = "block_sparse_moe" if arch in ("mixtral", "phimoe") else "mlp"
    up, down = ("w3", "w2") if moe == "block_sparse_moe" else ("up_proj", "down_proj")
    assert on_disk[f"model.layers.1.{moe}.experts.7.{up}.weight"][0] == (inter, h)
    assert on_disk[f"model.layers.1.{moe}.experts.7.{down}.weight"][0] == (h, inter)
    assert on_disk[f"model.layers.0.{moe}.gate.weight"][0] == (8, h)
    assert on_disk["model.embed_tokens.weight"][0] == (cfg["vocab_size"], h)
    if arch == "qwen3moe":  # head_dim * heads != hidden, as in Qwen3-30B-A3B
        assert on_disk["model.layers.0.self_attn.q_proj.weight"][0] == (cfg["head_dim"] * 4, h)
        assert on_disk["model.layers.0.self_attn.k_norm.weight"][0] == (cfg["head_dim"],)
    if arch == "olmoe":  # OLMoE norms q and k over all heads at once
        assert on_disk["model.layers.0.self_attn.k_norm.weight"][0] == (h,)


# ----------------------------------------------------------------------------- transformers load


def test_loads_every_weight_and_matches_in_memory_model(ckpt: Path, loaded: Loaded) -> None:
    model, warnings = loaded
    assert warnings == []  # no load report: nothing missing, unexpected or newly initialized
    assert not model.training and model.dtype == torch.float32
    cfg = _config(ckpt)
    assert model.config.rope_parameters["rope_theta"] == cfg["rope_theta"]  # hub-style key understood
    reference = build_tiny_model(cfg, seed=0)
    ref_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name
    ids = _token_ids(cfg["vocab_size"])
    assert torch.equal(_logits(model, ids), _logits(reference, ids))


def test_forward_gives_spread_finite_logits(ckpt: Path, loaded: Loaded) -> None:
    model = loaded[0]
    vocab = _config(ckpt)["vocab_size"]
    logits = _logits(model, _token_ids(vocab))
    assert logits.shape == (32, vocab)
    assert torch.isfinite(logits).all()
    assert 0.2 < logits.std().item() < 10.0
    assert len(set(logits.argmax(-1).tolist())) > 4  # predictions depend on the input


def test_routing_is_not_degenerate(ckpt: Path, loaded: Loaded) -> None:
    model = loaded[0]
    cfg = _config(ckpt)
    ids = _token_ids(cfg["vocab_size"]).unsqueeze(0)
    with torch.no_grad():
        router_logits = model(ids, output_router_logits=True).router_logits
    assert len(router_logits) == cfg["num_hidden_layers"]
    for layer, rl in enumerate(router_logits):
        rl = rl.reshape(32, -1)
        top1 = rl.argmax(-1)
        assert len(set(top1.tolist())) >= 4, (layer, top1.tolist())
        top2 = rl.topk(2, dim=-1).values
        assert (top2[:, 0] - top2[:, 1]).min() > 0  # no exact ties
        assert rl.std() > 0.5  # spread, not all near zero


# ----------------------------------------------------------------------------- files


def test_same_seed_gives_identical_bytes(tmp_path: Path, tok_cache: Path) -> None:
    a = make_tiny_checkpoint("qwen2moe", tmp_path / "a", seed=3, tokenizer_cache=tok_cache)
    b = make_tiny_checkpoint("qwen2moe", tmp_path / "b", seed=3, tokenizer_cache=tok_cache)
    c = make_tiny_checkpoint("qwen2moe", tmp_path / "c", seed=4, tokenizer_cache=tok_cache)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "config.json").read_bytes() == (c / "config.json").read_bytes()


@pytest.mark.parametrize("arch", ["mixtral", "qwen2moe"])
def test_sharded_checkpoint_loads_like_single_file(arch: str, tmp_path: Path, tok_cache: Path) -> None:
    single = make_tiny_checkpoint(arch, tmp_path / "single", tokenizer_cache=tok_cache)
    sharded = make_tiny_checkpoint(arch, tmp_path / "sharded", max_shard_bytes=2_000_000, tokenizer_cache=tok_cache)
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (sharded / "model.safetensors").exists()
    assert shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    single_tensors = _disk_tensors(single)
    assert set(index["weight_map"]) == set(single_tensors)
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == (single / "model.safetensors").stat().st_size - _header_bytes(single)
    ids = _token_ids(_config(single)["vocab_size"])
    assert torch.equal(_logits(load_reference_model(sharded), ids), _logits(load_reference_model(single), ids))
    # Writing single-file into the sharded directory must not leave shards behind.
    make_tiny_checkpoint(arch, sharded, tokenizer_cache=tok_cache)
    assert sorted(p.name for p in sharded.glob("model*")) == ["model.safetensors"]


def _header_bytes(ckpt: Path) -> int:
    data = (ckpt / "model.safetensors").read_bytes()
    return 8 + int.from_bytes(data[:8], "little")


def test_bfloat16_on_disk(tmp_path: Path, tok_cache: Path) -> None:
    d = make_tiny_checkpoint("phimoe", tmp_path / "bf16", dtype="bfloat16", tokenizer_cache=tok_cache)
    cfg = _config(d)
    assert cfg["torch_dtype"] == "bfloat16"
    assert {dtype for _, dtype in _disk_tensors(d).values()} == {"BF16"}
    ids = _token_ids(cfg["vocab_size"])
    assert torch.equal(_logits(load_reference_model(d), ids), _logits(build_tiny_model(cfg, seed=0), ids))


def test_larger_dims_and_bad_dims(tmp_path: Path, tok_cache: Path) -> None:
    d = make_tiny_checkpoint("qwen3moe", tmp_path / "big", hidden_size=512, moe_intermediate_size=768,
                             tokenizer_cache=tok_cache)
    shapes = _disk_tensors(d)
    assert shapes["model.layers.0.mlp.experts.0.gate_proj.weight"][0] == (768, 512)
    logits = _logits(load_reference_model(d), _token_ids(_config(d)["vocab_size"], 8))
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="multiple of 256"):
        make_tiny_checkpoint("mixtral", tmp_path / "bad", hidden_size=300, tokenizer_cache=tok_cache)
    with pytest.raises(ValueError, match="unknown arch"):
        make_tiny_checkpoint("llama", tmp_path / "bad", tokenizer_cache=tok_cache)


# ----------------------------------------------------------------------------- tokenizers


def test_tokenizer_round_trips_and_matches_its_files(ckpt: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    arch, cfg = _arch(ckpt), _config(ckpt)
    tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    assert len(tok) == cfg["vocab_size"]
    raw = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    sp = None
    if arch in ("mixtral", "phimoe"):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
        assert sp.vocab_size() == cfg["vocab_size"]
        assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    for s in SENTENCES + ([] if sp is not None else [LEADING_SPACE]):
        ids = tok.encode(s)
        assert tok.decode(ids, skip_special_tokens=True) == s
        assert raw.encode(s).ids == ids  # what a converter reads is what transformers does
        if sp is not None:
            assert [sp.bos_id(), *sp.encode(s)] == ids
    assert len(tok.encode(SENTENCES[0], add_special_tokens=False)) < len(SENTENCES[0]) / 2  # real merges


def test_special_ids_and_chat_template(ckpt: Path) -> None:
    from transformers import AutoTokenizer

    arch, cfg = _arch(ckpt), _config(ckpt)
    tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    assert tok.eos_token_id == cfg["eos_token_id"]
    assert tok.pad_token_id == cfg["pad_token_id"]
    if arch in ("mixtral", "phimoe"):
        assert (tok.bos_token_id, cfg["bos_token_id"], tok.unk_token_id) == (1, 1, 0)
    assert "chat_template" in json.loads((ckpt / "tokenizer_config.json").read_text())
    gen_eos = json.loads((ckpt / "generation_config.json").read_text())["eos_token_id"]
    assert cfg["eos_token_id"] in (gen_eos if isinstance(gen_eos, list) else [gen_eos])
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == CHAT_RENDERED[arch]
    ids = tok.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True, return_dict=False)
    for special in CHAT_SPECIALS[arch]:  # chat markers are single tokens
        assert tok.convert_tokens_to_ids(special) in ids, special
    assert tok.decode(ids) == text


def test_tokenizers_are_cached(tmp_path: Path) -> None:
    first = tiny_tokenizers.tokenizer_dir("olmoe", tmp_path)
    stamp = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    again = tiny_tokenizers.tokenizer_dir("olmoe", tmp_path)
    assert again == first and {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left behind
