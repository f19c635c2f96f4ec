"""Tokenizer and chat template of a GGUF, through llama.cpp (llama-cpp-python, vocab only).

llama.cpp's tokenizer is the one every GGUF is made for, so we use it rather than
re-implementing SentencePiece/BPE pre-tokenizers; loading with `vocab_only` reads no weights.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from edge_moe.errors import ModelFormatError


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]


class Tokenizer:
    def __init__(self, model_path: str | Path) -> None:
        from llama_cpp import Llama

        self.path = Path(model_path)
        try:
            with _quiet_stderr():
                self._llm = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise ModelFormatError(self.path, f"llama.cpp could not load the vocabulary: {e}") from None
        self.eos_id = int(self._llm.token_eos())
        self.bos_id = int(self._llm.token_bos())
        self.metadata: dict[str, str] = dict(self._llm.metadata)
        self._eog = self._eog_ids()

    def _eog_ids(self) -> frozenset[int]:
        """End-of-generation tokens: EOS plus those llama.cpp marks as EOG (e.g. <|im_end|>, <|end|>)."""
        import llama_cpp

        ids = {self.eos_id}
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        for tid in range(self.n_vocab):
            if llama_cpp.llama_vocab_is_eog(vocab, tid):
                ids.add(tid)
        return frozenset(i for i in ids if i >= 0)

    @property
    def n_vocab(self) -> int:
        return int(self._llm.n_vocab())

    def is_end(self, token: int) -> bool:
        return token in self._eog

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def token_bytes(self, token: int) -> bytes:
        return bytes(self._llm.detokenize([token], special=False))

    def decode(self, tokens: list[int]) -> str:
        return bytes(self._llm.detokenize(tokens, special=False)).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict[str, str]]) -> ChatPrompt:
        """The model's own chat template (from the GGUF) applied to messages, with the
        generation prompt added; falls back to a plain transcript when the GGUF has none."""
        template = self.metadata.get("tokenizer.chat_template")
        if not template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return ChatPrompt(text, ())
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos = self._llm.detokenize([self.bos_id], special=True).decode("utf-8", "replace") if self.bos_id >= 0 else ""
        eos = self._llm.detokenize([self.eos_id], special=True).decode("utf-8", "replace")
        result = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)(messages=messages)
        stop = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return ChatPrompt(result.prompt, tuple(stop))

    def close(self) -> None:
        self._llm.close()


@contextlib.contextmanager
def _quiet_stderr():  # llama.cpp logs to fd 2 even with verbose=False in some paths
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
