"""Token sampling with llama.cpp's parameters, defaults and order.

Chain (llama.cpp common/sampling defaults): repetition penalty -> top-k -> top-p -> min-p ->
temperature -> draw. temperature <= 0 is greedy (argmax of the raw logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64
    seed: int | None = None  # None: random

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be positive, got {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, history: list[int]) -> int:
        """Pick the next token from logits [V] (any device) given the tokens so far."""
        p = self.params
        x = logits.detach().float().cpu().clone()  # [V]
        if p.repeat_penalty != 1.0 and p.repeat_last_n > 0 and history:
            recent = torch.tensor(sorted(set(history[-p.repeat_last_n:])), dtype=torch.long)
            vals = x[recent]
            x[recent] = torch.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        if p.greedy:
            return int(torch.argmax(x))
        if p.top_k > 0 and p.top_k < x.numel():
            kth = torch.topk(x, p.top_k).values[-1]
            x[x < kth] = float("-inf")
        if p.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True)
            probs = torch.softmax(sorted_x, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = (torch.cumsum(probs, dim=-1) - probs) >= p.top_p
            x[order[drop]] = float("-inf")
        if p.min_p > 0.0:
            probs = torch.softmax(x, dim=-1)
            x[probs < p.min_p * probs.max()] = float("-inf")
        probs = torch.softmax(x / p.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
