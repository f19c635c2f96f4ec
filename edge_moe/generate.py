"""Generation: a Python generator that yields tokens with their timings.

    for event in generate(model, tokenizer, prompt_tokens, max_tokens=64, params=SamplingParams()):
        print(event.text, end="")

The prompt is evaluated in one batched forward (prefill), then one token per step (decode).
Stops on an end-of-generation token, a stop string, or max_tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from edge_moe.executor import HybridModel
from edge_moe.sampling import Sampler, SamplingParams
from edge_moe.tokenizer import Tokenizer
from edge_moe.trace import ReplayRouting


@dataclass(frozen=True)
class TokenEvent:
    token: int
    text: str  # the newly completed UTF-8 text (may be "" while a multi-byte character is pending)
    index: int  # 0 for the first generated token
    seconds: float  # time spent producing this token (prefill included for index 0)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    stop_reason: str = ""  # "eos" | "stop_string" | "length"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generation_tps(self) -> float:
        # decode speed: tokens after the first, whose time includes the prefill
        n = self.generated_tokens - 1
        return n / self.generation_seconds if n > 0 and self.generation_seconds else 0.0


def generate(model: HybridModel, tokenizer: Tokenizer, prompt_tokens: Sequence[int], max_tokens: int,
             params: SamplingParams, stop: Sequence[str] = (), stats: GenerationStats | None = None,
             replay: ReplayRouting | None = None) -> Iterator[TokenEvent]:
    """Yield generated tokens. `replay` forces the routing from a trace (benchmarks only)."""
    if max_tokens <= 0:
        return
    stats = stats if stats is not None else GenerationStats()
    sampler = Sampler(params)
    history = list(prompt_tokens)
    pending = b""  # bytes of an incomplete UTF-8 character
    text_so_far = ""

    t0 = time.perf_counter()
    def step(tokens: list[int]):  # logits of the last position
        forced = None if replay is None else replay.for_positions(model.n_past, len(tokens))
        return model.forward(tokens, force_ids=forced, last_only=True)[-1]

    logits = step(list(prompt_tokens))
    stats.prompt_tokens = len(prompt_tokens)
    stats.prompt_seconds = time.perf_counter() - t0
    t_prev = t0
    for i in range(max_tokens):
        token = sampler(logits, history)
        history.append(token)
        if tokenizer.is_end(token):
            stats.stop_reason = "eos"
            return
        pending += tokenizer.token_bytes(token)
        text, pending = _complete_utf8(pending)
        text_so_far += text
        now = time.perf_counter()
        stats.generated_tokens = i + 1
        if i > 0:
            stats.generation_seconds += now - t_prev
        yield TokenEvent(token, text, i, now - t_prev)
        if any(s and s in text_so_far[-(len(s) + len(text)):] for s in stop):
            stats.stop_reason = "stop_string"
            return
        if i + 1 == max_tokens:
            stats.stop_reason = "length"
            return
        t_prev = time.perf_counter()
        logits = step([token])


def _complete_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the complete UTF-8 prefix of `data`; return it and the incomplete tail."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""
