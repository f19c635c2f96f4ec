"""`edge-moe bench`: flags, and the result as text (the JSON is edge_moe/bench.py's)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_moe.errors import EdgeMoeError

GIB = 2**30


def add_bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="measure prefill, TTFT, decode, memory and cache traffic on a GGUF "
                                     "(llama-bench's protocol; benchmarks/ compares with llama.cpp)")
    b.add_argument("-m", "--model", required=True, help="path to a .gguf")
    b.add_argument("--routing", default="natural", choices=["natural", "replay"],
                   help="natural: the model's router; replay: expert ids forced from --trace")
    b.add_argument("--trace", default=None, help="routing trace for --routing replay (.npz or edge-moe JSON)")
    b.add_argument("--trace-problem", default="0", help="which experts_<p> array of an .npz trace")
    b.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (prefill)")
    b.add_argument("-n", "--n-gen", type=int, default=128, help="decode steps (always all of them: no EOS stop)")
    b.add_argument("-r", "--repetitions", type=int, default=3, help="measured runs (mean and stddev)")
    b.add_argument("-t", "--threads", type=int, default=None, help="CPU expert threads (default: the plan's)")
    b.add_argument("--vram-budget", type=float, default=None, metavar="GiB",
                   help="everything on the GPU stays within this (dense, KV, workspace, slots, CUDA context)")
    b.add_argument("--gpu-budget", type=float, default=None, metavar="GiB", help="expert slots only")
    b.add_argument("--cache-admission", default=None, choices=["all", "reuse"], help="override the plan's rule")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--profile-tokens", type=int, default=1,
                   help="decode steps run with the per-layer profiler after the runs (0: none)")
    b.add_argument("--no-warmup", action="store_true")
    b.add_argument("--no-record-figures", action="store_true",
                   help="do not keep this run's CPU DRAM figure for later plans on this machine")
    b.add_argument("--max-seconds", type=float, default=None,
                   help="stop decoding after this long (after loading); the result is marked incomplete")
    b.add_argument("--seed", type=int, default=0, help="prompt token ids")
    b.add_argument("--label", default="", help="a name for this row in reports")
    b.add_argument("-o", "--output", default=None, help="write the JSON result to this file")
    b.add_argument("--json", action="store_true", help="print the JSON result instead of text")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_moe.bench import BenchConfig, run_bench

    try:
        cfg = BenchConfig(model=Path(args.model), routing=args.routing,
                          trace=None if args.trace is None else Path(args.trace), trace_problem=args.trace_problem,
                          prompt_tokens=args.n_prompt, gen_tokens=args.n_gen, repeats=args.repetitions,
                          threads=args.threads, vram_budget_gib=args.vram_budget, gpu_budget_gib=args.gpu_budget,
                          admission=args.cache_admission, device=args.device, profile_tokens=args.profile_tokens,
                          warmup=not args.no_warmup, max_seconds=args.max_seconds, seed=args.seed, label=args.label,
                          record_figures=not args.no_record_figures)
    except ValueError as e:
        raise EdgeMoeError(f"invalid option: {e}") from None
    if args.routing == "replay":
        print(f"edge-moe: REPLAY MODE: routing forced from {args.trace}", file=sys.stderr)
    try:
        result = run_bench(cfg, log=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    except ValueError as e:
        raise EdgeMoeError(f"{args.model}: {e}") from None
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    print(text if args.json else format_result(result))
    return 0


def _ms(d: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def format_result(r: dict[str, Any]) -> str:
    from edge_moe.layer_profile import format_breakdown

    s, c, p = r["summary"], r["config"], r["plan"]
    cache = r["cache"]
    geo = "none (every expert on the CPU)" if cache is None else (
        f"{cache['n_sets']} sets x {cache['n_ways']} ways, {cache['policy']}, admission {cache['admission']}")
    gpu, host = r["memory"]["gpu"], r["memory"]["host"]
    vram = "-" if not gpu else (f"{gpu['peak_vram_bytes'] / GIB:.2f} GiB (torch reserved "
                                f"{gpu['torch_max_reserved_bytes'] / GIB:.2f}, planned {p['planned_vram_bytes'] / GIB:.2f})")
    rows = [
        ("model", f"{c['model']} ({r['model']['arch']}, {r['model']['n_layer']} layers, "
                  f"{r['model']['n_expert']} experts, top-{r['model']['k']})"),
        ("run", f"{r['device']}, {r['threads']} threads, routing {c['routing']}"
                + (f" ({c['trace']})" if c["trace"] else "") + f", cache {geo}"),
        ("prefill", f"{_ms(s['prefill_tps'], digits=1)} tok/s ({c['prompt_tokens']} tokens); "
                    f"TTFT {_ms(s['ttft_seconds'], 1e3, 1)} ms"),
        ("decode", f"{_ms(s['decode_tps'])} tok/s ({c['gen_tokens']} tokens after the prompt, "
                   f"{s['decode_tps']['n']} runs)" + ("" if r["complete"] else "  INCOMPLETE: --max-seconds")),
        ("planner", f"predicted decode {p['predicted_decode_tps']:.2f} tok/s"
                    + ("" if p["predicted_decode_tps_on_trace"] is None
                       else f" ({p['predicted_decode_tps_on_trace']:.2f} on the trace)")
                    + f", prefill {p['predicted_prefill_tps']:.0f} tok/s"),
        ("cache", f"hit rate {_ms(s['hit_rate'], digits=3)}, fills/token {_ms(s['fills_per_token'])}"),
        ("bytes", f"DRAM {_ms(s['dram_bytes_per_token'], 1 / 2**20, 1)} MiB/token, "
                  f"PCIe {_ms(s['pcie_bytes_per_token'], 1 / 2**20, 1)} MiB/token"),
        ("memory", f"VRAM peak {vram}; host peak RSS {host['peak_rss_bytes'] / GIB:.2f} GiB"
                   + (f" (anon {host['RssAnon_bytes'] / GIB:.2f}, file-backed {host['RssFile_bytes'] / GIB:.2f} now)"
                      if "RssAnon_bytes" in host else "")),
        ("load", f"{r['load_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows] + [f"warning: {w}" for w in r.get("warnings", [])]
    b = r["breakdown"]
    if b:
        out += ["", f"one decode token, per layer (ms; profiled, device synchronized between phases): "
                    f"token {b['token_ms']:.2f} ms, layers {b['layers_ms']:.2f}, outside layers "
                    f"{b['outside_layers_ms']:.2f}", format_breakdown(b)]
    p = r.get("prefill_breakdown")
    if p:
        out += ["", f"one prefill of {p['prompt_tokens']} tokens, per layer (ms; profiled): {p['token_ms']:.2f} ms, "
                    f"layers {p['layers_ms']:.2f}", format_breakdown(p, max_rows=8)]
    return "\n".join(out)
