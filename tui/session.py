"""A chat conversation and its generation loop, with no Textual in it (testable on its own).

The app drives a ChatSession from a worker thread; `stop()` may be called from any thread
and is checked between tokens, so Esc keeps the partial reply.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_moe.errors import EdgeMoeError
from edge_moe.generate import GenerationStats, generate
from edge_moe.sampling import SamplingParams

FORMAT_VERSION = 1


def default_conversations_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("edge-moe")) / "conversations"


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass
class Loaded:
    """What the loader returns: the model, its tokenizer and a one-line plan for the stats panel."""
    model: Any  # HybridModel (Any: tests may substitute)
    tokenizer: Any  # Tokenizer
    path: Path
    plan: str = ""
    n_threads: int | None = None

    def close(self) -> None:
        for obj in (self.model, self.tokenizer):
            close = getattr(obj, "close", None)
            if close is not None:
                close()


@dataclass
class ChatSession:
    messages: list[Message] = field(default_factory=list)
    system: str = ""
    prompt_history: list[str] = field(default_factory=list)
    title: str = ""
    # the file this conversation was saved to / loaded from, so /save overwrites it
    path: Path | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()

    # --- conversation edits -------------------------------------------------------
    def clear(self) -> None:
        self.messages.clear()
        self.title = ""
        self.path = None

    def add_user(self, text: str) -> None:
        self.messages.append(Message("user", text))
        if not self.prompt_history or self.prompt_history[-1] != text:
            self.prompt_history.append(text)
        if not self.title:
            self.title = text.strip().splitlines()[0][:60] if text.strip() else "untitled"

    def drop_last_reply(self) -> bool:
        """For /regen: remove the last assistant reply (if any) so the last prompt is answered again."""
        if self.messages and self.messages[-1].role == "assistant":
            self.messages.pop()
        return bool(self.messages) and self.messages[-1].role == "user"

    # --- generation ---------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def chat_messages(self) -> list[dict[str, str]]:
        msgs = [{"role": m.role, "content": m.content} for m in self.messages]
        if self.system:
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs

    def prompt_tokens(self, tokenizer: Any) -> tuple[list[int], tuple[str, ...]]:
        msgs = self.chat_messages()
        try:
            chat = tokenizer.chat_prompt(msgs)
        except Exception:  # noqa: BLE001 - templates (Mixtral's) may refuse a system role
            if not self.system:
                raise
            # why: fold the system prompt into the first user turn, as those templates expect
            rest = [dict(m) for m in msgs[1:]]
            if rest:
                rest[0]["content"] = f"{self.system}\n\n{rest[0]['content']}"
            chat = tokenizer.chat_prompt(rest)
        return tokenizer.encode(chat.text, add_bos=False), chat.stop

    def reply(self, loaded: Loaded, max_tokens: int, params: SamplingParams,
              stats: GenerationStats) -> Iterator[str]:
        """Generate the assistant's reply to the conversation, yielding text pieces; the reply
        (partial when stopped) is appended to messages when the iterator finishes."""
        self._stop.clear()
        tokens, stop = self.prompt_tokens(loaded.tokenizer)
        n_ctx = getattr(getattr(loaded.model, "config", None), "n_ctx", None)
        if n_ctx is not None and len(tokens) >= n_ctx:
            raise EdgeMoeError(f"the conversation ({len(tokens)} tokens) fills the context ({n_ctx}); "
                               "use /clear or a larger context")
        if n_ctx is not None:
            max_tokens = min(max_tokens, n_ctx - len(tokens))
        loaded.model.reset()  # why: the whole conversation is re-evaluated each turn (simple, correct)
        pieces: list[str] = []
        try:
            for event in generate(loaded.model, loaded.tokenizer, tokens, max_tokens, params, stop, stats):
                pieces.append(event.text)
                yield event.text
                if self._stop.is_set():
                    stats.stop_reason = "stopped"
                    break
        finally:
            text = "".join(pieces)
            for s in stop:  # the stop string is not part of the reply
                if s and text.endswith(s):
                    text = text[: -len(s)]
            self.messages.append(Message("assistant", text))

    # --- persistence --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "title": self.title, "system": self.system,
                "messages": [asdict(m) for m in self.messages], "prompt_history": self.prompt_history}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> ChatSession:
        try:
            msgs = [Message(str(m["role"]), str(m["content"])) for m in data["messages"]]
        except (KeyError, TypeError) as e:
            raise EdgeMoeError(f"{path or 'conversation'}: not an edge-moe conversation ({e})") from None
        return cls(msgs, str(data.get("system", "")), [str(p) for p in data.get("prompt_history", [])],
                   str(data.get("title", "")), path)

    def save(self, directory: Path, clock: Callable[[], float] = time.time) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        if self.path is None or self.path.parent != directory:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
            slug = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")[:40] or "chat"
            path, n = directory / f"{stamp}-{slug}.json", 1
            while path.exists():  # why: two saves in one second must not overwrite each other
                n += 1
                path = directory / f"{stamp}-{slug}-{n}.json"
            self.path = path
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.path)  # why: an interrupted save never leaves a half-written file
        return self.path

    @classmethod
    def load(cls, path: Path) -> ChatSession:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EdgeMoeError(f"{path}: cannot read the conversation ({e})") from None
        if not isinstance(data, dict):
            raise EdgeMoeError(f"{path}: not an edge-moe conversation")
        return cls.from_json(data, path)


def list_conversations(directory: Path) -> list[tuple[Path, str]]:
    """Saved conversations, newest first, with their titles (unreadable files skipped)."""
    if not directory.is_dir():
        return []
    out: list[tuple[Path, str]] = []
    for p in sorted(directory.glob("*.json"), reverse=True):
        try:
            title = str(json.loads(p.read_text(encoding="utf-8")).get("title", "")) or p.stem
        except (OSError, ValueError, AttributeError):
            continue
        out.append((p, title))
    return out
