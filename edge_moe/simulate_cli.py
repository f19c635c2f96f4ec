"""`edge-moe simulate`: replay a routing trace through a cache configuration and predict tok/s."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from edge_moe.errors import EdgeMoeError

# DESIGN.md: Mixtral-8x7B Q4_0, one expert = 3 x 4096 x 14336 weights at 4.5 bits = 99.1 MB = 94.5 MiB
MIXTRAL_Q4_0_EXPERT_MIB = 3 * 4096 * 14336 * 4.5 / 8 / 2**20
SWEEP_POLICIES = ("LRU", "FIFO", "LFU", "random")
SWEEP_ADMISSIONS = ("all", "reuse")


def add_simulate_parser(sub: Any) -> None:
    s = sub.add_parser("simulate", help="replay a routing trace through the GPU expert cache; predict tok/s",
                       description="Replay a routing trace (ours: .json; shared/traces: .npz) through a cache "
                                   "and price it with DESIGN.md's cost model. Machine defaults are the GPU "
                                   "machine measured in DESIGN.md (H100, PCIe Gen5, Xeon 16 threads).")
    s.add_argument("trace", metavar="TRACE", help="routing trace: .npz (experts_<p> arrays) or edge-moe .json")
    s.add_argument("--problem", default="0", help="which experts_<p> array of an .npz trace (default 0)")
    s.add_argument("--n-experts", type=int, default=None, help="experts per layer (default: max id in trace + 1)")
    s.add_argument("--cache-nblocks", type=int, default=None, help="cache sets (default: one per layer)")
    s.add_argument("--cache-nways", type=int, default=2, help="ways per set (default 2)")
    s.add_argument("--cache-replace-policy", default="LRU", help="LRU | FIFO | LFU | random")
    s.add_argument("--cache-quota", type=int, default=None, help="at most this many cache fills per token")
    s.add_argument("--cache-admission", default="all", help="all (admit every miss) | reuse (cost model)")
    s.add_argument("--expert-mib", type=float, default=round(MIXTRAL_Q4_0_EXPERT_MIB, 2),
                   help="bytes of one expert in MiB (default: Mixtral-8x7B Q4_0, 99 MB = 94.5 MiB, DESIGN.md)")
    s.add_argument("--dram-gbps", type=float, default=56.0,
                   help="CPU expert path DRAM read, GB/s (default 56: DESIGN.md GPU machine)")
    s.add_argument("--pcie-gbps", type=float, default=55.0,
                   help="host to GPU pinned copy, GB/s (default 55: DESIGN.md GPU machine)")
    s.add_argument("--gpu-expert-us", type=float, default=40.0,
                   help="one cached expert on the GPU, microseconds (default 40: DESIGN.md GPU machine)")
    s.add_argument("--base-ms", type=float, default=2.0,
                   help="per-token time outside the routed experts, ms (default 2)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--sweep", action="store_true",
                   help="table over ways 1..n_experts-1 x LRU/FIFO/LFU/random x admission all/reuse")
    s.set_defaults(func=cmd_simulate)


def _load_trace(path: str, problem: str) -> np.ndarray:
    from edge_moe.trace import ReplayRouting

    return ReplayRouting.load(path, problem).experts


def cmd_simulate(args: argparse.Namespace) -> int:
    from edge_moe.expert_cache import CacheConfig
    from edge_moe.simulator import MachineFigures, admission_config, format_report, simulate

    experts = _load_trace(args.trace, args.problem)
    if experts.ndim != 3 or experts.size == 0:
        raise EdgeMoeError(f"{args.trace}: trace has shape {experts.shape}, expected [tokens, layers, k]")
    n_layers = experts.shape[1]
    n_experts = args.n_experts if args.n_experts is not None else int(experts.max()) + 1
    try:
        machine = MachineFigures(args.dram_gbps, args.pcie_gbps, args.gpu_expert_us * 1e-6, args.base_ms * 1e-3)
        expert_bytes = int(args.expert_mib * 2**20)
        if expert_bytes <= 0:
            raise ValueError(f"--expert-mib must be positive, got {args.expert_mib}")
        n_sets = n_layers if args.cache_nblocks is None else args.cache_nblocks

        def run(ways: int, policy: str, rule: str) -> Any:
            adm = admission_config(rule, args.cache_quota, machine, expert_bytes)
            return simulate(experts, CacheConfig(n_sets, ways, policy, adm), expert_bytes, n_experts, machine)

        if args.sweep:
            results = [run(ways, policy, rule) for ways in range(1, n_experts)
                       for policy in SWEEP_POLICIES for rule in SWEEP_ADMISSIONS]
        else:
            results = [run(args.cache_nways, args.cache_replace_policy, args.cache_admission)]
    except ValueError as e:
        raise EdgeMoeError(f"invalid option: {e}") from None

    if args.json:
        dicts = [r.to_dict() for r in results]
        print(json.dumps(dicts if args.sweep else dicts[0]))
    elif args.sweep:
        print(format_sweep(results))
    else:
        print(format_report(results[0]))
    return 0


def format_sweep(results: list[Any]) -> str:
    """One row per simulation, then the no-cache baseline."""
    head = f"{'ways':>4} {'policy':<6} {'admit':<5} {'hit':>5} {'fills/t':>7} {'DRAM MB/t':>9} " \
           f"{'PCIe MB/t':>9} {'tok/s':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.n_ways:>4} {r.replace:<6} {r.admission:<5} {r.hit_rate:>5.3f} {r.fills_per_token:>7.2f} "
                     f"{r.dram_bytes_per_token / 1e6:>9.0f} {r.pcie_bytes_per_token / 1e6:>9.0f} "
                     f"{r.tokens_per_second:>6.2f}")
    if results:
        r = results[0]
        lines.append(f"no cache: {r.n_layers * r.k * r.expert_bytes / 1e6:.0f} DRAM MB/t, "
                     f"{r.baseline_tokens_per_second:.2f} tok/s ({r.tokens} tokens, {r.n_sets} sets)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m edge_moe.simulate_cli`) until cli.py wires the subcommand."""
    parser = argparse.ArgumentParser(prog="edge-moe")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except EdgeMoeError as e:
        print(f"edge-moe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
