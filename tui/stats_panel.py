"""The live stats panel: speeds, expert-cache hit rates (with a per-layer heat strip), memory, plan.

`snapshot()` is pure (easy to test); the widgets only render a StatsSnapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.widgets import Static

# (vram bytes or None when not on CUDA, ram bytes); injectable so snapshot tests are stable
MemoryProbe = Callable[[Any], tuple[int | None, int]]


def real_memory(model: Any) -> tuple[int | None, int]:
    import psutil

    ram = psutil.Process().memory_info().rss
    vram = None
    device = getattr(model, "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch

        vram = int(torch.cuda.memory_allocated(device))
    return vram, ram


@dataclass(frozen=True)
class StatsSnapshot:
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    tokens: int = 0
    hit_rate: float | None = None  # None: no cache or no lookups yet
    layer_rates: list[float | None] = field(default_factory=list)
    vram: int | None = None
    ram: int | None = None
    threads: str = "auto"
    plan: str = "loading…"
    device: str = ""


def snapshot(loaded: Any, gen: Any, memory: MemoryProbe) -> StatsSnapshot:
    """Read the model's counters (from the UI thread; counters are plain ints, a torn read is harmless)."""
    if loaded is None:
        return StatsSnapshot()
    model = loaded.model
    cache = getattr(getattr(model, "gpu", None), "cache", None)
    hit_rate, rates = None, []
    if cache is not None:
        s = cache.stats
        rates = [h / (h + m) if h + m else None for h, m in zip(s.hits_by_layer, s.misses_by_layer)]
        hit_rate = s.hit_rate if s.hits + s.misses else None
    vram, ram = memory(model)
    threads = str(loaded.n_threads) if loaded.n_threads else "auto"
    return StatsSnapshot(gen.prompt_tps if gen else 0.0, gen.generation_tps if gen else 0.0,
                         gen.generated_tokens if gen else 0, hit_rate, rates, vram, ram, threads,
                         loaded.plan, str(getattr(model, "device", "")))


def heat_strip(rates: list[float | None]) -> Text:
    """One block per layer: red (all misses) to green (all hits); grey when not looked up yet."""
    out = Text()
    for r in rates:
        if r is None:
            out.append("▪", style="grey50")
        else:
            red, green = int(255 * (1 - r)), int(200 * r + 55)
            out.append("█", style=f"rgb({red},{green},60)")
    return out


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _tps(x: float) -> str:
    return "—" if not x else f"{x:.1f}"


class StatsPanel(Static):
    """The full panel (side column on wide terminals)."""

    def show(self, s: StatsSnapshot) -> None:
        t = Text()
        t.append("speed\n", style="bold")
        t.append(f" prompt  {_tps(s.prompt_tps)} tok/s\n gen     {_tps(s.generation_tps)} tok/s\n")
        t.append("expert cache\n", style="bold")
        t.append(f" hit rate {_pct(s.hit_rate)}\n")
        if s.layer_rates:
            t.append(" layers ")
            t.append_text(heat_strip(s.layer_rates))
            t.append("\n")
        t.append("memory\n", style="bold")
        t.append(f" VRAM {_gib(s.vram)}\n RAM  {_gib(s.ram)}\n")
        t.append("plan\n", style="bold")
        t.append(f" threads {s.threads}\n {s.plan}\n")
        self.update(t)


class StatsLine(Static):
    """One compact line for narrow terminals (the panel is hidden there)."""

    def show(self, s: StatsSnapshot) -> None:
        t = Text(f"gen {_tps(s.generation_tps)} tok/s · hit {_pct(s.hit_rate)} ")
        t.append_text(heat_strip(s.layer_rates))
        t.append(f" · RAM {_gib(s.ram)}" + ("" if s.vram is None else f" · VRAM {_gib(s.vram)}"))
        self.update(t)


def stats_report(s: StatsSnapshot) -> str:
    """The /stats text (markdown), with per-layer numbers the heat strip only hints at."""
    layers = ", ".join(_pct(r) for r in s.layer_rates) or "no cache"
    return (f"**prompt** {_tps(s.prompt_tps)} tok/s · **generation** {_tps(s.generation_tps)} tok/s "
            f"({s.tokens} tokens)  \n**cache hit rate** {_pct(s.hit_rate)}; per layer: {layers}  \n"
            f"**VRAM** {_gib(s.vram)} · **RAM** {_gib(s.ram)} · **threads** {s.threads}  \n"
            f"**plan** {s.plan}")
