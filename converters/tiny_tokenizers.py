"""Small real tokenizers for the tiny test checkpoints, trained offline and cached on disk.

Each family gets the tokenizer kind its hub checkpoints ship, so a converter meets the
same files it meets on a real model:

* mixtral, phimoe: a SentencePiece BPE ``tokenizer.model`` (byte fallback, Llama ids
  ``<unk>``=0, ``<s>``=1, ``</s>``=2) plus the ``tokenizer.json`` that transformers derives.
* qwen2moe, qwen3moe: a byte-level BPE ``tokenizer.json`` with Qwen2's split regex; the
  special tokens come after the trained vocabulary, as in Qwen.
* olmoe: a GPT-NeoX byte-level BPE ``tokenizer.json`` with ``<|endoftext|>``=0, ``<|padding|>``=1.

The tokenizer files are written through the transformers tokenizer class the family names
in ``tokenizer_config.json``: transformers 5 rebuilds the normalizer and pre-tokenizer from
that class and keeps only vocab and merges from ``tokenizer.json``, so a file built any
other way could tokenize differently in transformers than in a converter reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FORMAT_VERSION = "v1"  # bump when the corpus or the training recipe changes
SP_VOCAB_SIZE = 768
BPE_VOCAB_SIZE = 768

_ENGLISH = """\
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
A mixture of experts routes every token to a few experts out of many; the router picks
the top-k experts by their logits and mixes their outputs with softmax weights.
Edge devices have little memory, so the experts that do not fit on the GPU stay in RAM.
When the cache misses, the CPU computes the expert; when it hits, the GPU does the work.
It was a bright cold day in April, and the clocks were striking thirteen.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
Why don't you try again tomorrow? I'm sure it'll work; they've said we'd be fine.
The weather today: sunny, 23 degrees, wind from the north-west at 12 km/h.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 3.14159 2.71828 -17 1e-5 65536.
Dates like 2024-11-23 and times like 13:45:07 appear in logs all the time.
Questions, answers, and conversations between a user and an assistant are common.
The assistant should be helpful, honest, and harmless, and it should answer briefly.
"""

_CODE = '''\
def softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = sum(e)
    return [v / s for v in e]


class ExpertCache:
    """A set-associative cache of expert weights."""

    def __init__(self, n_slots: int) -> None:
        self.slots: dict[int, int] = {}
        self.n_slots = n_slots

    def lookup(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self.slots


for i in range(10):
    if i % 2 == 0:
        print(f"even {i}")
    else:
        print("odd", i)

#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; ++i) {
        printf("%s\\n", argv[i]);
    }
    return 0;
}

{"name": "edge-moe", "version": "0.1.0", "experts": [0, 1, 2, 3], "enabled": true}
$ python -m pytest tests/ -q && echo "ok" || exit 1
SELECT name, count(*) FROM tokens WHERE id > 10 GROUP BY name ORDER BY 2 DESC;
'''

# A little non-ASCII text so merges over multi-byte characters exist; characters that do
# not occur here are left to byte fallback (SentencePiece) or raw bytes (byte-level BPE).
_OTHER = """\
Le café est très bon, merci beaucoup. Où est la gare ? À bientôt, élève !
Grüße aus München: Äpfel, Öl und Übung machen den Meister. Straße.
El niño comió una manzana mañana por la mañana. ¿Qué tal? ¡Hola!
日本語のテキストも少し含める。中文文本也在这里。한국어 문장도 있습니다.
Emoji: 🙂 🚀 ✨ and symbols: → ≤ ≥ ± × ÷ ° € £ ¥ © ™ …
"""

_SUBJECTS = ("the model", "a router", "the cache", "every expert", "the user", "our GPU", "this layer",
             "the tokenizer", "a small laptop", "the converter", "each token", "the assistant")
_VERBS = ("reads", "writes", "computes", "routes", "loads", "stores", "quantizes", "returns",
          "evicts", "predicts", "selects", "prints")
_OBJECTS = ("the weights", "many tokens", "two experts", "a GGUF file", "the logits", "some memory",
            "the answer", "a short sentence", "the hidden state", "eight experts", "the prompt")
_ENDINGS = (".", "!", "?", " quickly.", " in 12 ms.", " again and again.", ", then stops.")


def _synthetic_sentences(n: int) -> list[str]:
    """Templated sentences, so that common words occur often enough to be merged."""
    rng = random.Random(1234)  # random.Random(int) is stable across Python versions
    return [
        f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}"
        for _ in range(n)
    ]


def training_corpus() -> list[str]:
    """The fixed training text, one line per item (blank lines dropped)."""
    lines = (_ENGLISH + _CODE + _OTHER).splitlines() + _synthetic_sentences(200)
    return [line for line in lines if line.strip()]


@dataclass(frozen=True)
class TokenizerSpec:
    """What a family's tokenizer looks like; ids are resolved after training."""

    kind: str  # "spm" or "bpe"
    tokenizer_class: str
    special_tokens: tuple[str, ...]  # SentencePiece user-defined symbols / BPE added tokens
    bos: str | None  # the tokenizer's bos_token
    config_bos: str | None  # bos_token_id in config.json (hub Qwen names one, hub OLMoE none)
    eos: str
    pad: str | None
    chat_template: str
    extra_eos: tuple[str, ...] = ()  # generation_config.json stops on these too, as on the hub
    specials_first: bool = False  # BPE: special tokens get ids 0.. instead of after the vocab


_MIXTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
_PHI_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TULU_TEMPLATE = (  # OLMoE-Instruct: Tulu style, role markers are plain text
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)

_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_SPECS: dict[str, TokenizerSpec] = {
    "mixtral": TokenizerSpec(
        kind="spm", tokenizer_class="LlamaTokenizer", special_tokens=(),
        bos="<s>", config_bos="<s>", eos="</s>", pad=None, chat_template=_MIXTRAL_TEMPLATE),
    "phimoe": TokenizerSpec(
        kind="spm", tokenizer_class="LlamaTokenizer",
        special_tokens=("<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"),
        bos="<s>", config_bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", chat_template=_PHI_TEMPLATE,
        extra_eos=("<|end|>",)),
    "qwen2moe": TokenizerSpec(  # Qwen1.5-MoE base: eos is <|endoftext|>
        kind="bpe", tokenizer_class="Qwen2Tokenizer", special_tokens=_QWEN_SPECIALS,
        bos=None, config_bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>",
        chat_template=_CHATML_TEMPLATE, extra_eos=("<|im_end|>",)),
    "qwen3moe": TokenizerSpec(  # Qwen3: eos is <|im_end|>
        kind="bpe", tokenizer_class="Qwen2Tokenizer", special_tokens=_QWEN_SPECIALS,
        bos=None, config_bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>",
        chat_template=_CHATML_TEMPLATE, extra_eos=("<|endoftext|>",)),
    "olmoe": TokenizerSpec(  # GPT-NeoX ids; hub OLMoE's config.json names no bos
        kind="bpe", tokenizer_class="GPTNeoXTokenizer", special_tokens=("<|endoftext|>", "<|padding|>"),
        bos="<|endoftext|>", config_bos=None, eos="<|endoftext|>", pad="<|padding|>",
        chat_template=_TULU_TEMPLATE, specials_first=True),
}


@dataclass(frozen=True)
class TokenizerInfo:
    """Ids a model config needs from its tokenizer."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int | None
    extra_eos_token_ids: tuple[int, ...]  # generation stops on these too (chat end markers)


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edge-moe")) / "tiny-tokenizers"  # next to edge_moe.demo's cache


def _recipe_key(arch: str) -> str:
    """Short hash of everything that shapes the tokenizer: a changed recipe gets a new cache dir."""
    spec = TOKENIZER_SPECS[arch]
    blob = json.dumps([TOKENIZER_FORMAT_VERSION, SP_VOCAB_SIZE, BPE_VOCAB_SIZE, repr(spec), training_corpus()])
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def tokenizer_dir(arch: str, cache_dir: Path | None = None) -> Path:
    """Directory holding ``arch``'s tokenizer files, trained on first use."""
    if arch not in TOKENIZER_SPECS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(TOKENIZER_SPECS)}")
    root = cache_dir if cache_dir is not None else default_cache_dir()
    final = root / f"{arch}-{TOKENIZER_FORMAT_VERSION}-{_recipe_key(arch)}"
    if (final / "tokenizer_config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    # Train into a private temp dir, then rename: parallel test workers never see half a tokenizer.
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=root))
    try:
        _train(arch, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared
        os.replace(tmp, final)
    except OSError:
        if not (final / "tokenizer_config.json").is_file():  # lost a race only if the winner finished
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def tokenizer_files(arch: str, cache_dir: Path | None = None) -> list[Path]:
    """The files a checkpoint directory needs for ``arch``'s tokenizer."""
    return sorted(p for p in tokenizer_dir(arch, cache_dir).iterdir() if p.is_file())


def tokenizer_info(arch: str, cache_dir: Path | None = None) -> TokenizerInfo:
    """Vocab size and special ids, read from the saved files (no transformers import needed)."""
    spec = TOKENIZER_SPECS[arch]
    vocab = _vocab_of(tokenizer_dir(arch, cache_dir))
    return TokenizerInfo(
        vocab_size=len(vocab),
        bos_token_id=vocab[spec.config_bos] if spec.config_bos is not None else None,
        eos_token_id=vocab[spec.eos],
        pad_token_id=vocab[spec.pad] if spec.pad is not None else None,
        extra_eos_token_ids=tuple(vocab[t] for t in spec.extra_eos),
    )


def _vocab_of(directory: Path) -> dict[str, int]:
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in data["added_tokens"]})
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{directory}: token ids are not contiguous")
    return vocab


def _train(arch: str, out: Path) -> None:
    spec = TOKENIZER_SPECS[arch]
    tok = _train_spm(spec, out) if spec.kind == "spm" else _train_bpe(spec)
    tok.chat_template = spec.chat_template
    # Hub checkpoints of these families carry the template inside tokenizer_config.json.
    tok.save_pretrained(out, save_jinja_files=False)
    _normalize_tokenizer_config(out, spec)


def _train_spm(spec: TokenizerSpec, out: Path) -> PreTrainedTokenizerBase:
    import io

    import sentencepiece as spm
    from transformers import AddedToken, LlamaTokenizer

    model = io.BytesIO()
    # Llama's trainer settings: BPE, byte fallback, digits split, no normalization, so that
    # SentencePiece and the transformers BPE derived from it tokenize the same way.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus()), model_writer=model,
        model_type="bpe", vocab_size=SP_VOCAB_SIZE, character_coverage=0.9995,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=list(spec.special_tokens),
        num_threads=1, minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    # from_pretrained is what turns a tokenizer.model into vocab + merges in transformers 5.
    tok = LlamaTokenizer.from_pretrained(out, legacy=False, add_bos_token=True, add_eos_token=False,
                                         eos_token=spec.eos, pad_token=spec.pad)
    # User-defined SentencePiece symbols are atomic there; make them atomic specials here too.
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special_tokens],
                   special_tokens=True)
    return tok


def _train_bpe(spec: TokenizerSpec) -> PreTrainedTokenizerBase:
    import transformers
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers.trainers import BpeTrainer

    cls = getattr(transformers, spec.tokenizer_class)
    # Train the backend the class itself builds, so the pipeline is the family's exactly.
    backend = cls().backend_tokenizer
    first = list(spec.special_tokens) if spec.specials_first else []
    n_after = 0 if spec.specials_first else len(spec.special_tokens)
    trainer = BpeTrainer(vocab_size=BPE_VOCAB_SIZE - n_after, special_tokens=first, show_progress=False,
                         initial_alphabet=ByteLevel.alphabet())
    backend.train_from_iterator(training_corpus(), trainer=trainer)
    data = json.loads(backend.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    tok = cls(vocab=vocab, merges=merges)
    # Qwen: specials are added tokens only, with ids after the trained vocabulary, in the
    # family's order; naming bos/eos in the constructor would add them first, so set them after.
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special_tokens],
                   special_tokens=True)
    tok.bos_token, tok.eos_token, tok.pad_token = spec.bos, spec.eos, spec.pad
    if spec.tokenizer_class == "Qwen2Tokenizer":
        tok.unk_token = None  # as in hub Qwen: byte-level BPE has no unknown token
    ids = tok.convert_tokens_to_ids(list(spec.special_tokens))
    first = 0 if spec.specials_first else len(vocab)
    if ids != list(range(first, first + len(ids))):
        raise RuntimeError(f"special tokens got ids {ids}, expected them from {first} on")
    return tok


def _normalize_tokenizer_config(out: Path, spec: TokenizerSpec) -> None:
    """Drop fields that vary between runs and make sure the family's essentials are present."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = spec.tokenizer_class
    cfg["chat_template"] = spec.chat_template
    cfg["model_max_length"] = 4096
    for key in ("is_local", "local_files_only"):  # where it was loaded from, not what it is
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    # transformers 5 no longer writes special_tokens_map.json; hub checkpoints (and older
    # converters) still have one.
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if cfg.get(k)}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")
