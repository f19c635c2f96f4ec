"""Per-phase step statistics of the executor: what a slow result is explained with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepTimings:
    """Seconds spent per phase, summed over layers and calls (a slow result says why)."""

    attention: float = 0.0
    router_sync: float = 0.0
    cpu_experts: float = 0.0
    gpu_experts_enqueue: float = 0.0
    cpu_calls: int = 0  # layer steps that ran the CPU expert path (a count, not seconds)

    def as_dict(self) -> dict[str, float]:
        """The seconds per phase (the call count left out)."""
        return {k: v for k, v in self.__dict__.items() if k != "cpu_calls"}


@dataclass
class DecodeCpuWork:
    """The CPU expert path in decode steps only (one-token forwards), which StepTimings mixes with
    the prompt's: a run's DRAM figure is computed from these (bench_stats.decode_dram_figure). A
    prompt's calls read each missed expert once for many tokens, so they cost another way."""

    seconds: float = 0.0  # their cpu_experts phase (layers without a miss included, as in StepTimings)
    calls: int = 0  # layer steps that ran the CPU expert path
    misses: list[int] = field(default_factory=list)  # experts computed on the CPU, per layer

    def add(self, layer: int, seconds: float, misses: int) -> None:
        """One decode layer step: its cpu_experts phase and the experts the CPU computed (0: no call)."""
        self.seconds += seconds
        if misses:
            self.calls += 1
            self.misses[layer] += misses

    def copy(self) -> DecodeCpuWork:
        return DecodeCpuWork(self.seconds, self.calls, list(self.misses))

    def since(self, before: DecodeCpuWork) -> DecodeCpuWork:
        """The work done after `before` (an earlier copy)."""
        return DecodeCpuWork(self.seconds - before.seconds, self.calls - before.calls,
                             [a - b for a, b in zip(self.misses, before.misses)])
