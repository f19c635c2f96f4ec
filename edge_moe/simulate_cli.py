"""`edge-moe simulate`: replay a routing trace through a cache configuration and predict tok/s."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from edge_moe.errors import EdgeMoeError

from edge_moe import cost_model as cm

# DESIGN.md: Mixtral-8x7B Q4_0, one expert = 3 x 4096 x 14336 weights at 4.5 bits = 99.1 MB = 94.5 MiB
MIXTRAL_Q4_0_EXPERT_MIB = 3 * 4096 * 14336 * 4.5 / 8 / 2**20
H100_GEMV_GBPS = 2730.0  # fp16 GEMV, README "Quantized experts on the GPU"
MIXTRAL_GPU_EXPERT_US = MIXTRAL_Q4_0_EXPERT_MIB * 2**20 / (cm.quant_gbps(H100_GEMV_GBPS) * 1e9) * 1e6
MIXTRAL_BASE_MS = 32000 * 4096 * 4.5 / 8 / (cm.quant_gbps(H100_GEMV_GBPS) * 1e9) * 1e3  # Q4_0 LM head
SWEEP_POLICIES = ("LRU", "FIFO", "LFU", "random")
SWEEP_ADMISSIONS = ("all", "reuse")


def add_simulate_parser(sub: Any) -> None:
    s = sub.add_parser("simulate", help="replay a routing trace through the GPU expert cache; predict tok/s",
                       description="Replay a routing trace (ours: .json; shared/traces: .npz) through a cache "
                                   "and price it with the per-layer cost model (edge_moe/cost_model.py). Machine "
                                   "defaults are the GPU machine measured in DESIGN.md and cost_model.py (H100, "
                                   "PCIe Gen5, Xeon 16 threads).")
    s.add_argument("trace", metavar="TRACE", help="routing trace: .npz (experts_<p> arrays) or edge-moe .json")
    s.add_argument("--problem", default="0", help="which experts_<p> array of an .npz trace (default 0)")
    s.add_argument("--n-experts", type=int, default=None, help="experts per layer (default: max id in trace + 1)")
    s.add_argument("--cache-nblocks", type=int, default=None,
                   help="cache sets (default: one per layer not pinned; 0 with --pinned-layers: no sets)")
    s.add_argument("--cache-nways", type=int, default=2, help="ways per set (default 2)")
    s.add_argument("--pinned-layers", type=int, default=0, metavar="P",
                   help="the last P layers keep every expert and run as one CUDA graph (no lookups): "
                        "llama.cpp's --n-cpu-moe n_layers - P when there are no sets")
    s.add_argument("--cache-replace-policy", default="LRU", help="LRU | FIFO | LFU | random")
    s.add_argument("--cache-quota", type=int, default=None, help="at most this many cache fills per token")
    s.add_argument("--cache-admission", default="all", help="all (admit every miss) | reuse (cost model)")
    s.add_argument("--expert-mib", type=float, default=round(MIXTRAL_Q4_0_EXPERT_MIB, 2),
                   help="bytes of one expert in MiB (default: Mixtral-8x7B Q4_0, 99 MB = 94.5 MiB, DESIGN.md)")
    s.add_argument("--dram-gbps", type=float, default=47.0,
                   help="CPU expert path DRAM read net of the per-call cost, GB/s (default 47: H100 machine, "
                        "Qwen3 experts; 46-58 on Mixtral's)")
    s.add_argument("--pcie-gbps", type=float, default=55.0,
                   help="host to GPU pinned copy, GB/s (default 55: DESIGN.md GPU machine)")
    s.add_argument("--gpu-expert-us", type=float, default=round(MIXTRAL_GPU_EXPERT_US, 1),
                   help="one cached expert on the GPU, microseconds (default: a Mixtral Q4_0 expert at "
                        "the H100's measured Q4_0 kernel rate, cost_model.py)")
    s.add_argument("--base-ms", type=float, default=round(MIXTRAL_BASE_MS, 3),
                   help="per-token time outside the layers, ms (default: Mixtral's Q4_0 LM head on the H100)")
    s.add_argument("--layer-us", type=float, default=cm.LAYER_SECONDS * 1e6,
                   help="per-layer loop time whatever the routing: front graph, sync, host lookup, launches, "
                        "join (default: measured on the H100 machine, cost_model.py)")
    s.add_argument("--cpu-call-us", type=float, default=cm.CPU_CALL_FIXED_S * 1e6,
                   help="fixed cost of a layer's ggml call for its misses (default: H100 machine; "
                        "`edge-moe` measures yours, microbench.py)")
    s.add_argument("--gpu-layer-us", type=float, default=cm.EXPERT_KERNELS_FIXED_S * 1e6,
                   help="fixed GPU time of a layer's hit kernels (default: H100 machine)")
    s.add_argument("--fill-issue-us", type=float, default=cm.FILL_ISSUE_S * 1e6,
                   help="decode-thread time to issue one fill (default: fills on a background thread)")
    s.add_argument("--resident-ms", type=float, default=None,
                   help="token time when every expert is cached (one CUDA graph); default: no such mode")
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
        machine = MachineFigures(args.dram_gbps, args.pcie_gbps, args.gpu_expert_us * 1e-6, args.base_ms * 1e-3,
                                 layer_seconds=args.layer_us * 1e-6, cpu_call_seconds=args.cpu_call_us * 1e-6,
                                 gpu_layer_seconds=args.gpu_layer_us * 1e-6,
                                 fill_issue_seconds=args.fill_issue_us * 1e-6,
                                 resident_token_seconds=None if args.resident_ms is None else args.resident_ms * 1e-3,
                                 resident_layer_seconds=cm.resident_layer_seconds(experts.shape[2],
                                                                                  args.gpu_expert_us * 1e-6),
                                 uncached_layer_seconds=cm.UNCACHED_LAYER_S,
                                 uncached_dram_gbps=args.dram_gbps * cm.REPACK_DRAM_GAIN)
        expert_bytes = int(args.expert_mib * 2**20)
        if expert_bytes <= 0:
            raise ValueError(f"--expert-mib must be positive, got {args.expert_mib}")
        pinned = args.pinned_layers
        n_sets = n_layers - pinned if args.cache_nblocks is None else args.cache_nblocks

        def run(ways: int, policy: str, rule: str) -> Any:
            adm = admission_config(rule, args.cache_quota, machine, expert_bytes)
            config = CacheConfig(n_sets, ways if n_sets else 0, policy, adm, pinned_layers=pinned)
            return simulate(experts, config, expert_bytes, n_experts, machine)

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
