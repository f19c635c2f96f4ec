"""Tokenizer and chat template of an HF checkpoint -> GGUF `tokenizer.*` keys.

Two families, as llama.cpp knows them:
- SentencePiece (`tokenizer.model`; Mixtral, Phi-3.5-MoE): tokenizer.ggml.model = "llama",
  with scores and token types taken from the model proto.
- byte-level BPE (`tokenizer.json` with a BPE model; Qwen, OLMoE): tokenizer.ggml.model =
  "gpt2", with merges and a pre-tokenizer name llama.cpp recognises.
Added tokens (tokenizer.json / tokenizer_config.json) are marked CONTROL when special
and USER_DEFINED otherwise; the vocabulary is padded to config.json's vocab_size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter
from gguf.constants import TokenType

from edge_moe.errors import ModelFormatError


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(path, f"not valid JSON: {e}") from None


def _added_tokens(model_dir: Path) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) from tokenizer.json and tokenizer_config.json."""
    out: dict[int, tuple[str, bool]] = {}
    tj = model_dir / "tokenizer.json"
    if tj.is_file():
        for t in _read_json(tj).get("added_tokens", []):
            out[int(t["id"])] = (t["content"], bool(t.get("special", False)))
    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        for tid, t in (_read_json(tc).get("added_tokens_decoder") or {}).items():
            out[int(tid)] = (t["content"], bool(t.get("special", False)))
    return out


def _spm_vocab(model_dir: Path) -> Vocab:
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf

    path = model_dir / "tokenizer.model"
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError
        raise ModelFormatError(path, f"not a SentencePiece model: {e}") from None
    if proto.trainer_spec.model_type not in (1, 2):  # 1 = unigram, 2 = BPE
        raise ModelFormatError(path, f"unsupported SentencePiece model type {proto.trainer_spec.model_type}")
    kinds = {1: TokenType.NORMAL, 2: TokenType.UNKNOWN, 3: TokenType.CONTROL,
             4: TokenType.USER_DEFINED, 5: TokenType.UNUSED, 6: TokenType.BYTE}
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(kinds.get(p.type, TokenType.NORMAL)) for p in proto.pieces]
    for tid, (content, special) in sorted(_added_tokens(model_dir).items()):
        kind = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        if tid < len(tokens):
            if tokens[tid] != content:
                raise ModelFormatError(model_dir, f"added token {tid} {content!r} disagrees with "
                                                  f"tokenizer.model's {tokens[tid]!r}")
            if types[tid] == TokenType.NORMAL:
                types[tid] = kind
        elif tid == len(tokens):
            tokens.append(content)
            scores.append(-1000.0)
            types.append(kind)
        else:
            raise ModelFormatError(model_dir, f"added token id {tid} leaves a gap after {len(tokens)} tokens")
    special = {}
    for name, idx in (("unk", proto.trainer_spec.unk_id), ("bos", proto.trainer_spec.bos_id),
                      ("eos", proto.trainer_spec.eos_id), ("pad", proto.trainer_spec.pad_id)):
        if 0 <= idx < len(tokens):
            special[name] = idx
    return Vocab("llama", "default", tokens, types, scores=scores, special_ids=special)


def _bpe_vocab(model_dir: Path, pre: str) -> Vocab:
    path = model_dir / "tokenizer.json"
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ModelFormatError(path, f"tokenizer model type {model.get('type')!r} is not supported "
                                     "(expected BPE, or a tokenizer.model for SentencePiece)")
    vocab: dict[str, int] = model["vocab"]
    added = _added_tokens(model_dir)
    n = max([*vocab.values(), *added.keys()]) + 1
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        if i in added:
            content, special = added[i]
            tokens.append(content)
            types.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab("gpt2", pre, tokens, types, merges=merges)


def _template_specials(model_dir: Path) -> tuple[str | None, str | None]:
    """The special tokens tokenizer.json's post-processor puts around a single sequence.

    transformers adds BOS/EOS through this template when tokenizer_config.json does
    not say; llama.cpp's converter derives add_bos/add_eos from it the same way.
    Returns (None, None) when there is no template; "" where it adds no special token.
    """
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None, None
    proc = _read_json(path).get("post_processor") or {}
    procs = proc.get("processors", []) if proc.get("type") == "Sequence" else [proc]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            first = single[0].get("SpecialToken", {}).get("id", "") if single else ""
            last = single[-1].get("SpecialToken", {}).get("id", "") if len(single) > 1 else ""
            return first, last
    return None, None


def read_vocab(model_dir: Path, config: dict[str, Any], bpe_pre: str) -> Vocab:
    """The checkpoint's tokenizer, special ids, flags and chat template."""
    if (model_dir / "tokenizer.model").is_file():
        vocab = _spm_vocab(model_dir)
    elif (model_dir / "tokenizer.json").is_file():
        vocab = _bpe_vocab(model_dir, bpe_pre)
    else:
        raise ModelFormatError(model_dir, "no tokenizer: expected tokenizer.model (SentencePiece) "
                                          "or tokenizer.json (BPE)")
    n_vocab = int(config.get("vocab_size", len(vocab.tokens)))
    if len(vocab.tokens) > n_vocab:
        raise ModelFormatError(model_dir, f"tokenizer has {len(vocab.tokens)} tokens but config.json's "
                                          f"vocab_size is {n_vocab}")
    for i in range(len(vocab.tokens), n_vocab):  # embedding rows without a token
        vocab.tokens.append(f"[PAD{i}]")
        vocab.token_types.append(int(TokenType.UNUSED))
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)

    tc_path = model_dir / "tokenizer_config.json"
    tc = _read_json(tc_path) if tc_path.is_file() else {}
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for name in ("bos", "eos", "unk", "pad"):
        tok = tc.get(f"{name}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and tok in index:
            vocab.special_ids[name] = index[tok]
        elif isinstance(config.get(f"{name}_token_id"), int) and name not in vocab.special_ids:
            vocab.special_ids[name] = config[f"{name}_token_id"]
    vocab.add_bos = tc.get("add_bos_token") if isinstance(tc.get("add_bos_token"), bool) else None
    vocab.add_eos = tc.get("add_eos_token") if isinstance(tc.get("add_eos_token"), bool) else None
    if vocab.add_bos is None or vocab.add_eos is None:
        first, last = _template_specials(model_dir)
        if first and vocab.add_bos is None:
            vocab.add_bos = index.get(first) == vocab.special_ids.get("bos")
        if last and vocab.add_eos is None:
            vocab.add_eos = index.get(last) == vocab.special_ids.get("eos")
    template = tc.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: llama.cpp takes the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    vocab.chat_template = template if isinstance(template, str) else None
    return vocab


def write_vocab(writer: GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for name, tid in vocab.special_ids.items():
        if 0 <= tid < len(vocab.tokens):
            setters[name](tid)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
