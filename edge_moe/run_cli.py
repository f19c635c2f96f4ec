"""`edge-moe run`: generate from a GGUF with llama.cpp's flag spellings, print timings and cache stats."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_moe.errors import EdgeMoeError


def add_run_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="generate text from a GGUF MoE model")
    r.add_argument("-m", "--model", default=None, help="path to a .gguf (default: the built-in demo model)")
    r.add_argument("-p", "--prompt", default="The quick brown fox", help="prompt text")
    r.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate")
    r.add_argument("-t", "--threads", type=int, default=None, help="CPU expert threads (default: physical cores)")
    r.add_argument("-c", "--ctx-size", type=int, default=None, help="context length (default: the plan's)")
    r.add_argument("--temp", type=float, default=0.8)
    r.add_argument("--top-k", type=int, default=40)
    r.add_argument("--top-p", type=float, default=0.95)
    r.add_argument("--min-p", type=float, default=0.05)
    r.add_argument("--repeat-penalty", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    r.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] for the dense parts and the cache")
    r.add_argument("--gpu-budget", type=float, default=None, metavar="GiB",
                   help="memory for cached experts; sizes the cache (one set per layer)")
    r.add_argument("--vram-budget", type=float, default=None, metavar="GiB",
                   help="everything on the GPU (dense weights, KV cache, workspace, expert slots, CUDA context) "
                        "stays within this; the planner sizes the expert cache from what is left")
    r.add_argument("--cache-nblocks", type=int, default=None, help="cache sets (the paper's N)")
    r.add_argument("--cache-nways", type=int, default=None, help="ways per set (the paper's M)")
    r.add_argument("--pinned-layers", type=int, default=None, metavar="P",
                   help="the last P layers keep every expert on the GPU and run without host round trips "
                        "(llama.cpp's --n-cpu-moe placement is n_layer - P); the cache serves the others")
    r.add_argument("--cache-replace-policy", default=None, help="LRU (default) | FIFO | LFU | random")
    r.add_argument("--cache-quota", type=int, default=None, help="at most this many cache fills per token")
    r.add_argument("--cache-admission", default=None, help="all (admit every miss) | reuse (cost model)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit without loading weights")
    r.add_argument("--trace-out", default=None, help="write the routing trace (.json or .csv)")
    r.add_argument("--replay-trace", default=None, help="force routing from a trace (.npz or .json): benchmarks only")
    r.add_argument("--replay-problem", default="0", help="which experts_<p> array of an .npz trace")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of text and timings")
    r.add_argument("--no-record-figures", action="store_true",
                   help="do not keep the decode steps' CPU DRAM figure for later plans on this machine")
    r.set_defaults(func=cmd_run)


def _cache_config(args: argparse.Namespace, model_path: str) -> Any:
    """The GPU expert cache from the flags, or None when no cache flag is given."""
    pinned = args.pinned_layers or 0
    if args.gpu_budget is None and args.cache_nblocks is None and args.cache_nways is None and not pinned:
        return None
    from edge_moe.cache_admission import AdmissionConfig, CostModel
    from edge_moe.expert_cache import CacheConfig, parse_replace_policy
    from edge_moe.placement import sets_for
    from edge_moe.gguf_file import GGUFFile
    from edge_moe.gpu_experts import GpuExpertsConfig, quantized_expert_bytes, slot_nbytes
    from edge_moe.model_config import read_config

    with GGUFFile(model_path) as gguf:
        cfg = read_config(gguf)
        q_bytes = quantized_expert_bytes(gguf, cfg)
        slot = slot_nbytes(gguf, cfg)
    cost = CostModel(expert_bytes=q_bytes, dram_bandwidth=50e9, pcie_bandwidth=25e9,
                     gpu_seconds_per_expert=q_bytes / 1e12)  # defaults until the planner measures
    rule = args.cache_admission or "all"
    admission = AdmissionConfig(rule=rule, max_fills_per_token=args.cache_quota,
                                cost=cost if rule == "reuse" else None)
    replace = parse_replace_policy(args.cache_replace_policy or "LRU")
    if pinned > cfg.n_layer:
        raise ValueError(f"--pinned-layers {pinned}: {model_path} has {cfg.n_layer} layers")
    dynamic = cfg.n_layer - pinned  # layers the sets serve
    if args.gpu_budget is not None:
        rest = int(args.gpu_budget * 2**30) - pinned * cfg.n_expert * slot
        if rest < 0:
            raise ValueError(f"--pinned-layers {pinned} needs {pinned * cfg.n_expert * slot / 2**30:.2f} GiB of "
                             f"expert slots, more than --gpu-budget {args.gpu_budget:g}")
        if pinned:  # the slots left over as sets for the other layers, if any (as the planner does)
            sets, ways = sets_for(rest // slot, dynamic, slot, cfg.n_expert)
            cache = CacheConfig(sets, ways, replace, admission, pinned_layers=pinned)
        else:
            cache = CacheConfig.from_budget(rest, slot, cfg.n_layer, cfg.n_expert, replace=replace, admission=admission)
    elif args.cache_nblocks is None and args.cache_nways is None:  # --pinned-layers alone
        cache = CacheConfig(0, 0, replace, admission, pinned_layers=pinned)
    else:
        cache = CacheConfig(dynamic if args.cache_nblocks is None else args.cache_nblocks,
                            2 if args.cache_nways is None else args.cache_nways, replace, admission,
                            pinned_layers=pinned)
    return GpuExpertsConfig(cache)


def _plan(args: argparse.Namespace, model_path: str) -> Any:
    """The planner's choice for this machine and model; explicit flags are overrides that win.

    Micro-benchmarks (a few seconds, cached per machine) run only for a CUDA run: on the CPU
    the plan is "no cache" whatever the figures; --dry-run uses cached figures if any.
    """
    from edge_moe.hardware import detect_hardware
    from edge_moe.planner import PlanOverrides, plan_for_machine

    device = None if args.device == "auto" else ("cpu" if args.device == "cpu" else "cuda")
    if device is None and detect_hardware().gpus and not _has_cuda():
        device = "cpu"  # an NVIDIA GPU, but torch was built without CUDA
    overrides = PlanOverrides(device=device, threads=args.threads, n_ctx=args.ctx_size, gpu_budget_gib=args.gpu_budget,
                              vram_budget_gib=args.vram_budget,
                              n_sets=args.cache_nblocks, n_ways=args.cache_nways, policy=args.cache_replace_policy,
                              quota=args.cache_quota, admission=args.cache_admission,
                              pinned_layers=args.pinned_layers)
    figures = "cached" if args.dry_run else ("profile" if device == "cpu" else "measure")
    return plan_for_machine(model_path, overrides, figures)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_run(args: argparse.Namespace) -> int:
    from edge_moe.executor import ExecutorConfig, HybridModel
    from edge_moe.generate import GenerationStats, generate
    from edge_moe.sampling import SamplingParams
    from edge_moe.tokenizer import Tokenizer
    from edge_moe.trace import ReplayRouting, TraceRecorder

    model_path = args.model
    if model_path is None:
        from edge_moe.demo import ensure_demo_model

        model_path = str(ensure_demo_model())
    try:
        params = SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                repeat_penalty=args.repeat_penalty, seed=args.seed)
        plan = _plan(args, model_path)
        if args.dry_run:
            from edge_moe.planner import format_plan

            print(json.dumps(plan.to_dict()) if args.json else format_plan(plan))
            return 0
        cache = _cache_config(args, model_path)  # explicit cache flags win over the plan
        if cache is None:
            cache = plan.gpu_experts_config()
        # with a VRAM budget the plan decides where the dense part goes (cpu when it does not fit)
        exec_device = plan.device if args.vram_budget is not None and args.device == "auto" else args.device
        config = ExecutorConfig(device=exec_device, n_ctx=args.ctx_size or plan.n_ctx,
                                n_threads=args.threads or plan.threads, cache=cache, prefill_chunk=plan.prefill_chunk)
    except ValueError as e:
        raise EdgeMoeError(f"invalid option: {e}") from None
    tokenizer = Tokenizer(model_path)
    stop: tuple[str, ...] = ()
    if args.chat:
        chat = tokenizer.chat_prompt([{"role": "user", "content": args.prompt}])
        prompt_tokens, stop = tokenizer.encode(chat.text, add_bos=False), chat.stop
    else:
        prompt_tokens = tokenizer.encode(args.prompt, add_bos=True)
    model = HybridModel(model_path, config)
    replay = None
    if args.replay_trace:
        replay = ReplayRouting.load(args.replay_trace, args.replay_problem)
        replay.check_model(model.cfg.n_layer, model.cfg.n_expert, model.cfg.n_expert_used)
        print(f"edge-moe: REPLAY MODE: routing forced from {replay.source}; the text is not the model's",
              file=sys.stderr)
    recorder = TraceRecorder() if args.trace_out else None
    if recorder:
        recorder.attach(model)
    stats = GenerationStats()
    tokens, pieces = [], []
    try:
        for event in generate(model, tokenizer, prompt_tokens, args.n_predict, params, stop, stats, replay):
            tokens.append(event.token)
            pieces.append(event.text)
            if not args.json:
                print(event.text, end="", flush=True)
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
    report = _report(model, stats, tokens, "".join(pieces), args)
    # The decode steps' DRAM figure prices later plans on this machine, as `edge-moe bench`'s does.
    # Kept whether the plan or the user's flags chose the cache, threads or routing (replay): the
    # figure is per expert byte and call of the CPU path, keyed by expert shape and threads, so
    # any configuration measures it; only CUDA runs keep it (bench_stats.RUN_FIGURE_POLICY).
    from edge_moe.bench_stats import keep_run_figure

    report["run_figure"] = keep_run_figure(model, record=not args.no_record_figures).to_dict()
    if recorder:
        recorder.save(args.trace_out)
    model.close()
    if args.json:
        print(json.dumps(report))
    else:
        print()
        _print_report(report)
    return 0


def _report(model: Any, stats: Any, tokens: list[int], text: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": str(model.gguf.path), "arch": model.cfg.arch, "device": str(model.device),
        "tokens": tokens, "text": text, "stop_reason": stats.stop_reason,
        "timings": {"prompt_tokens": stats.prompt_tokens, "prompt_seconds": stats.prompt_seconds,
                    "prompt_tps": stats.prompt_tps, "generated_tokens": stats.generated_tokens,
                    "generation_seconds": stats.generation_seconds, "generation_tps": stats.generation_tps,
                    "breakdown_seconds": model.timings.as_dict()},
        "replay": args.replay_trace,
        "streamed_experts": model.gpu.n_streamed,  # prefill misses computed on the GPU from streamed bytes
    }
    cache = model.gpu.cache
    if cache is None:
        out["cache"] = None
    else:
        s = cache.stats
        per_layer = [h / (h + m) if h + m else 0.0 for h, m in zip(s.hits_by_layer, s.misses_by_layer)]
        out["cache"] = {
            "sets": cache.n_sets, "ways": cache.n_ways, "pinned_layers": cache.config.pinned_layers,
            "policy": cache.config.replace.value,
            "admission": cache.config.admission.rule.value, "quota": cache.config.admission.max_fills_per_token,
            "hits": s.hits, "misses": s.misses, "hit_rate": s.hit_rate, "hit_rate_per_layer": per_layer,
            "fills": s.fills, "evictions": s.evictions, "declined": s.declined,
            "pcie_bytes": s.pcie_bytes, "dram_bytes": s.dram_bytes, "cpu_dram_bytes": s.cpu_dram_bytes,
        }
    return out


def _print_report(r: dict[str, Any]) -> None:
    t = r["timings"]
    err = sys.stderr
    print(f"prompt eval time = {1e3 * t['prompt_seconds']:10.2f} ms / {t['prompt_tokens']:5d} tokens "
          f"({t['prompt_tps']:8.2f} tokens per second)", file=err)
    n = max(t["generated_tokens"] - 1, 0)
    print(f"       eval time = {1e3 * t['generation_seconds']:10.2f} ms / {n:5d} runs   "
          f"({t['generation_tps']:8.2f} tokens per second)", file=err)
    b = t["breakdown_seconds"]
    print("breakdown (s): " + ", ".join(f"{k} {v:.3f}" for k, v in b.items()), file=err)
    print(f"run figure: {r['run_figure']['note']}", file=err)
    c = r["cache"]
    if c is None:
        print("cache: none (every expert on the CPU)", file=err)
        return
    per_layer = " ".join(f"{x:.2f}" for x in c["hit_rate_per_layer"])
    quota = "" if c["quota"] is None else f", quota {c['quota']}/token"
    print(f"cache: {c['sets']} sets x {c['ways']} ways, {c['policy']}, admission {c['admission']}{quota}; "
          f"hit rate {c['hit_rate']:.3f} "
          f"({c['hits']} hits, {c['misses']} misses), {c['fills']} fills, {c['evictions']} evictions, "
          f"{c['declined']} declined", file=err)
    print(f"cache: per layer {per_layer}", file=err)
    print(f"bytes: PCIe {c['pcie_bytes'] / 2**20:.1f} MiB, DRAM read {c['dram_bytes'] / 2**20:.1f} MiB "
          f"(CPU misses {c['cpu_dram_bytes'] / 2**20:.1f} MiB)", file=err)
