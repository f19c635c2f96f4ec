"""The `edge-moe` command: one entry point, one subcommand per job.

Errors a user can act on (EdgeMoeError) print one line naming the file and the
problem and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_moe.errors import EdgeMoeError


def _cmd_convert(args: argparse.Namespace) -> int:
    from edge_moe.converters.hf_to_gguf import convert

    out = convert(args.model_dir, args.outfile, outtype=args.outtype, progress=not args.no_progress)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_moe.model_summary import describe_gguf

    print(describe_gguf(Path(args.model)))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from edge_moe.hardware import detect_hardware, main_describe

    hw = detect_hardware()
    if args.model is None:
        print(main_describe(args.json, hw=hw))
        return 0
    import json

    from edge_moe.planner import format_plan, make_plan, measure_for_model
    from edge_moe.profiles import resolve_threads, select_profile

    match = select_profile(hw)
    measured = measure_for_model(args.model, resolve_threads(match.profile, hw), hw, refresh=args.measure)
    plan = make_plan(args.model, hw, match.profile, measured)
    if args.json:
        report = json.loads(main_describe(True, hw=hw))
        report["measurements"] = measured.to_dict()
        report["plan"] = plan.to_dict()
        print(json.dumps(report, indent=2))
    else:
        print(f"{main_describe(False, hw=hw)}\n\n{format_plan(plan)}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from edge_moe.tui.app import run_chat

    return run_chat(args.model, args.threads, args.ctx_size, args.gpu_budget,
                    record_figures=not args.no_record_figures)


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_moe.demo import run_demo

    return run_demo(arch=args.arch, outtype=args.outtype, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    from edge_moe.converters.quant_policy import OUTTYPES

    p = argparse.ArgumentParser(prog="edge-moe", description="Mixture-of-Experts LLMs on small GPUs.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="HF safetensors MoE checkpoint -> GGUF")
    c.add_argument("model_dir", help="directory with config.json, *.safetensors and tokenizer files")
    c.add_argument("--outfile", required=True, help="output .gguf path")
    c.add_argument("--outtype", default="f16", choices=list(OUTTYPES), help="tensor type of the weights")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)

    from edge_moe.bench_cli import add_bench_parser
    from edge_moe.run_cli import add_run_parser
    from edge_moe.simulate_cli import add_simulate_parser

    add_run_parser(sub)
    add_bench_parser(sub)
    add_simulate_parser(sub)

    pr = sub.add_parser("profile", help="detected hardware and the matching hardware profile")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("-m", "--model", default=None, help="also print the plan for this GGUF")
    pr.add_argument("--measure", action="store_true", help="re-run the micro-benchmarks (else measured once, cached)")
    pr.set_defaults(func=_cmd_profile)

    c = sub.add_parser("chat", help="interactive chat (Textual app); no -m: the built-in demo model")
    c.add_argument("-m", "--model", default=None, help="path to a .gguf (default: the demo model)")
    c.add_argument("-t", "--threads", type=int, default=None, help="CPU expert threads")
    c.add_argument("-c", "--ctx-size", type=int, default=None,
                   help="context length (default: the plan's on a GPU, else 4096)")
    c.add_argument("--gpu-budget", type=float, default=None, metavar="GiB", help="memory for cached experts")
    c.add_argument("--no-record-figures", action="store_true",
                   help="do not keep the replies' CPU DRAM figure for later plans on this machine")
    c.set_defaults(func=_cmd_chat)

    i = sub.add_parser("inspect", help="validate a GGUF and print its configuration")
    i.add_argument("model", help="path to a .gguf file")
    i.set_defaults(func=_cmd_inspect)

    d = sub.add_parser("demo", help="build the built-in demo model, convert it and run it (default job)")
    d.add_argument("--arch", default="mixtral", help="tiny demo architecture (mixtral, phimoe, qwen2moe, "
                                                      "qwen3moe, olmoe)")
    d.add_argument("--outtype", default="q8_0", choices=list(OUTTYPES))
    d.add_argument("--workdir", default=None, help="where to keep the demo files (default: user cache dir)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeMoeError as e:
        print(f"edge-moe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-moe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
