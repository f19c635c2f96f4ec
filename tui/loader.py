"""Loading the model for the chat app, reporting progress in steps (runs in a worker thread)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_moe.errors import EdgeMoeError

from edge_moe.tui.session import Loaded

# progress(label, fraction 0..1)
Progress = Callable[[str, float], None]
Loader = Callable[[Progress], Loaded]
CHAT_DEFAULT_CTX = 4096  # context without a plan (no CUDA, the demo, or an explicit --gpu-budget)


@dataclass(frozen=True)
class LoadOptions:
    model_path: str | None  # None: the built-in demo
    n_threads: int | None = None
    ctx: int | None = None  # None: the plan's context length (CHAT_DEFAULT_CTX where no plan ran)
    gpu_budget_gib: float | None = None
    device: str = "auto"  # auto | cpu | cuda[:N] (tests pin cpu so snapshots match on any machine)
    demo_workdir: Path | None = None  # where the demo model is built (default: the user cache dir)


def _planned_threads() -> int:
    """The CPU expert threads a plan picks on this machine without -t (planner.make_plan: the
    profile's number, else P-cores / physical cores), for loads that need no full plan."""
    from edge_moe.hardware import detect_hardware
    from edge_moe.profiles import resolve_threads, select_profile

    hw = detect_hardware()
    return resolve_threads(select_profile(hw).profile, hw)


def _cache_config(path: Path, opts: LoadOptions, demo: bool) -> tuple[Any, Any]:
    """(GpuExpertsConfig | None, the planner's Plan where it ran, else None)."""
    from edge_moe.expert_cache import CacheConfig
    from edge_moe.gpu_experts import GpuExpertsConfig

    import torch

    if opts.gpu_budget_gib is None:
        if demo:  # why: the demo gets a small partial cache (as `edge-moe demo` does) so the panel has hits to show
            return GpuExpertsConfig(CacheConfig(2, 3, "LRU")), None
        if not torch.cuda.is_available():
            return None, None
        # zero tuning: the planner sizes the cache from the machine (as `edge-moe run` does without flags)
        from edge_moe.planner import PlanOverrides, plan_for_machine

        plan = plan_for_machine(path, PlanOverrides(threads=opts.n_threads, n_ctx=opts.ctx))
        return plan.gpu_experts_config(), plan

    from edge_moe.gguf_file import GGUFFile
    from edge_moe.gpu_experts import slot_nbytes
    from edge_moe.model_config import read_config

    with GGUFFile(path) as gguf:
        cfg = read_config(gguf)
        slot = slot_nbytes(gguf, cfg)
    try:
        cache = CacheConfig.from_budget(int(opts.gpu_budget_gib * 2**30), slot, cfg.n_layer, cfg.n_expert)
    except ValueError as e:
        raise EdgeMoeError(f"--gpu-budget: {e}") from None
    return GpuExpertsConfig(cache), None


def describe_plan(model: object) -> str:
    """One line: where the experts live (the 'active plan' of the stats panel)."""
    gpu = getattr(model, "gpu", None)
    cache = getattr(gpu, "cache", None)
    device = getattr(model, "device", "cpu")
    if cache is None:
        return f"dense on {device}; experts on CPU"
    pinned = cache.config.pinned_layers
    where = f"last {pinned} layers pinned, " if pinned else ""
    sets = f"cache {cache.n_sets}x{cache.n_ways} {cache.config.replace.value}, " if cache.n_sets else ""
    return f"dense on {device}; {where}{sets}misses on CPU"


def default_loader(opts: LoadOptions) -> Loader:
    def load(progress: Progress) -> Loaded:
        from edge_moe.executor import ExecutorConfig, HybridModel
        from edge_moe.tokenizer import Tokenizer

        demo = opts.model_path is None
        if demo:
            progress("building the demo model", 0.05)
            from edge_moe.demo import ensure_demo_model

            path = ensure_demo_model(workdir=opts.demo_workdir)
        else:
            path = Path(opts.model_path)  # type: ignore[arg-type]
            if not path.is_file():
                raise EdgeMoeError(f"{path}: no such model file")
        progress("reading the tokenizer", 0.2)
        tokenizer = Tokenizer(path)
        progress("loading the weights", 0.4)
        try:
            cache, plan = _cache_config(path, opts, demo)
            # as `edge-moe run`: flags win over the plan (its threads, context and prefill step)
            n_threads = opts.n_threads or (plan.threads if plan is not None else None) or _planned_threads()
            n_ctx = opts.ctx or (plan.n_ctx if plan is not None else CHAT_DEFAULT_CTX)
            steps = {} if plan is None else {"prefill_chunk": plan.prefill_chunk}
            config = ExecutorConfig(device=opts.device, n_ctx=n_ctx, n_threads=n_threads, cache=cache, **steps)
        except ValueError as e:
            raise EdgeMoeError(f"invalid option: {e}") from None
        model = HybridModel(path, config)
        progress("ready", 1.0)
        return Loaded(model, tokenizer, path, describe_plan(model), n_threads)

    return load
