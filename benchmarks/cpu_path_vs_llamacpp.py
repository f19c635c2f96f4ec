"""Our CPU expert path vs llama.cpp's CPU-only decode, on the same GGUF, same threads, same ggml.

    python benchmarks/cpu_path_vs_llamacpp.py --model M.gguf --llama-bench build/bin/llama-bench \\
        --threads 16 --label mixtral --json out.json --md out.md

1. llama.cpp: `llama-bench -m M -ngl 0 -t N -n 32 -p 0 -r 3 -o json --repack 0,1` (CPU-only decode;
   --repack 0 reads the weights in place from the mmap like our zero-copy layout, --repack 1 (llama.cpp's
   default) from CPU_REPACK copies like ours with repack=True). tok/s is converted to effective GB/s two ways:
     experts only:  tok/s x n_layer x k x bytes of one expert   (understates llama.cpp: its time also
                    covers attention, norms, router, embedding row, output matrix)
     all bytes:     tok/s x every weight byte one token reads  (attention + router + norms + experts used
                    + one embedding row + output matrix): the upper line
2. ours: CpuExpertEngine on the same file's layers (expert_weights_from_gguf, zero-copy and repack),
   T=1, random top-k ids, layer after layer through ALL the file's layers (so the weights stream from
   DRAM, not the last-level cache); effective GB/s = k x bytes of one expert per call / call time.
3. per-call overhead at T=1 on tiny experts (benchmarks/cpu_experts_bench.py's measurement).

llama-bench and our engine must load the same libggml: make `import llama_cpp` find a package whose
lib/ holds the libggml-*.so next to that llama-bench (benchmarks/gpu_machine/cpu_path_vs_llamacpp.sh
does this). Not a unit test: numbers depend on the machine, and a shared machine is noisy; compare
ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine  # noqa: E402
from edge_moe.expert_weights import expert_weights_from_gguf  # noqa: E402
from edge_moe.ggml_lib import ggml_version, load_ggml  # noqa: E402
from edge_moe.gguf_file import GGUFFile  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def model_facts(gguf: GGUFFile) -> dict:
    """Layer count, top-k and the bytes one decoded token reads, from the file itself."""
    arch = gguf.get("general.architecture", str)
    n_layer = gguf.get(f"{arch}.block_count", int)
    k = gguf.get(f"{arch}.expert_used_count", int)
    n_expert = gguf.get(f"{arch}.expert_count", int)
    expert_bytes = expert_weights_from_gguf(gguf, 0).bytes_per_expert()
    token_bytes = 0
    for name, t in gguf.tensors.items():
        if name == "token_embd.weight":
            token_bytes += t.row_bytes()  # get_rows: one row per token
        elif "_exps." in name:
            token_bytes += t.nbytes * k // n_expert  # the k routed experts
        else:
            token_bytes += t.nbytes  # attention, norms, router, output: read whole
    return {"arch": arch, "n_layer": n_layer, "n_expert": n_expert, "top_k": k, "expert_bytes": expert_bytes,
            "expert_bytes_per_token": n_layer * k * expert_bytes, "all_bytes_per_token": token_bytes,
            "file_bytes": gguf.path.stat().st_size}


def run_llama_bench(exe: Path, model: Path, threads: int, n_gen: int, reps: int, facts: dict,
                    log: Path | None) -> list[dict]:
    cmd = [str(exe), "-m", str(model), "-ngl", "0", "-t", str(threads), "-n", str(n_gen), "-p", "0",
           "-r", str(reps), "-o", "json", "--repack", "0,1"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if log:
        log.write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = []
    for r in json.loads(proc.stdout):
        ts = r["samples_ts"]
        rows.append({
            "layout": "repack" if r["repack"] else "zero-copy", "threads": r["n_threads"],
            "tok_s": r["avg_ts"], "tok_s_stddev": r["stddev_ts"], "tok_s_samples": ts,
            "gb_s_experts": r["avg_ts"] * facts["expert_bytes_per_token"] / 1e9,
            "gb_s_all": r["avg_ts"] * facts["all_bytes_per_token"] / 1e9,
            "gb_s_experts_samples": [t * facts["expert_bytes_per_token"] / 1e9 for t in ts],
            "cpu_info": r.get("cpu_info"), "build_commit": r.get("build_commit"),
        })
    print(f"  llama-bench took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows


def run_ours(gguf: GGUFFile, facts: dict, threads: int, repack: bool, seconds: float, reps: int) -> dict:
    """T=1 calls through every layer in turn, random top-k ids; `reps` timed windows of `seconds`."""
    rng = np.random.default_rng(1)
    n_layer, k, n_expert = facts["n_layer"], facts["top_k"], facts["n_expert"]
    t0 = time.perf_counter()
    with CpuExpertEngine(CpuExpertConfig(n_threads=threads, repack=repack)) as engine:
        layers = [engine.prepare(expert_weights_from_gguf(gguf, i)) for i in range(n_layer)]
        prepare_s = time.perf_counter() - t0
        n_embd = layers[0].n_embd
        routings = [(rng.standard_normal((1, n_embd), dtype=np.float32),
                     rng.choice(n_expert, k, replace=False).astype(np.int32).reshape(1, k),
                     rng.random((1, k), dtype=np.float32)) for _ in range(257)]  # 257: coprime with layers
        out = np.empty((1, n_embd), np.float32)
        for i in range(2 * n_layer):  # warm-up: graph built, pages touched
            engine.forward(layers[i % n_layer], *routings[i % len(routings)], out=out)
        call_bytes = k * facts["expert_bytes"]
        windows, calls_total, i = [], 0, 0
        for _ in range(reps):
            calls, start = 0, time.perf_counter()
            while calls < 2 * n_layer or time.perf_counter() - start < seconds:
                engine.forward(layers[i % n_layer], *routings[i % len(routings)], out=out)
                calls += 1
                i += 1
            elapsed = time.perf_counter() - start
            windows.append({"calls": calls, "ms_per_call": elapsed / calls * 1e3,
                            "gb_s": calls * call_bytes / elapsed / 1e9})
            calls_total += calls
        repacked = layers[0].repacked
        for layer in layers:
            layer.close()
    gbs = [w["gb_s"] for w in windows]
    return {"layout": "repack" if repack else "zero-copy", "threads": threads, "layers": n_layer,
            "repacked_roles": list(repacked), "prepare_s": prepare_s, "calls": calls_total,
            "mb_per_call": call_bytes / 1e6, "ms_per_call": statistics.median(w["ms_per_call"] for w in windows),
            "gb_s": statistics.median(gbs), "gb_s_min": min(gbs), "gb_s_max": max(gbs), "windows": windows}


def run_overhead(threads: int) -> dict:
    from benchmarks.cpu_experts_bench import run_overhead as overhead  # tiny experts: time = overhead
    return overhead(argparse.Namespace(threads=threads))


def markdown(label: str, facts: dict, llama: list[dict], ours: list[dict], overhead: dict | None,
             machine: dict) -> str:
    gib = facts["file_bytes"] / 2**30
    lines = [
        f"### {label}: {facts['arch']}, {facts['n_layer']} layers, {facts['n_expert']} experts top-{facts['top_k']}, "
        f"Q4_0 ({gib:.1f} GiB file), {ours[0]['threads'] if ours else '?'} threads",
        "",
        f"machine: {machine['processor'] or machine['platform']}, {machine['logical_cores']} logical cores, "
        f"load average at start {machine['load_avg_at_start'][0]:.1f}, "
        f"ggml {machine['ggml']}; one expert = {facts['expert_bytes'] / 1e6:.1f} MB; a token reads "
        f"{facts['expert_bytes_per_token'] / 1e9:.3f} GB of experts, {facts['all_bytes_per_token'] / 1e9:.3f} GB "
        "of weights in all",
        "",
        "| layout | llama.cpp tok/s | llama.cpp GB/s (experts only) | llama.cpp GB/s (all bytes) "
        "| ours GB/s (min-max) | ours ms/call | ours / llama.cpp (experts only) | ours / llama.cpp (all bytes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_layout = {r["layout"]: r for r in llama}
    for o in ours:
        lb = by_layout.get(o["layout"])
        if lb is None:
            continue
        lines.append(
            f"| {o['layout']} | {lb['tok_s']:.2f} ± {lb['tok_s_stddev']:.2f} | {lb['gb_s_experts']:.1f} "
            f"| {lb['gb_s_all']:.1f} | {o['gb_s']:.1f} ({o['gb_s_min']:.1f}-{o['gb_s_max']:.1f}) "
            f"| {o['ms_per_call']:.3f} | **{o['gb_s'] / lb['gb_s_experts']:.2f}** | {o['gb_s'] / lb['gb_s_all']:.2f} |")
    if ours and llama:
        best_ours = max(ours, key=lambda r: r["gb_s"])
        best_llama = max(llama, key=lambda r: r["gb_s_experts"])
        lines.append(f"| best of each ({best_ours['layout']} vs {best_llama['layout']}) | | "
                     f"{best_llama['gb_s_experts']:.1f} | {best_llama['gb_s_all']:.1f} | {best_ours['gb_s']:.1f} | | "
                     f"**{best_ours['gb_s'] / best_llama['gb_s_experts']:.2f}** | "
                     f"{best_ours['gb_s'] / best_llama['gb_s_all']:.2f} |")
    if overhead:
        lines += ["", "per call at T=1, tiny experts (64 x 64, 8 experts, top-2), zero-copy: "
                  + ", ".join(f"{k} {v:.1f} us" for k, v in overhead.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--llama-bench", type=Path, help="llama-bench built with the same ggml (omit: ours only)")
    p.add_argument("--label", default="")
    p.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="llama-bench -r, and our timed windows per layout")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one timed window of ours")
    p.add_argument("--layouts", default="zero-copy,repack")
    p.add_argument("--no-overhead", action="store_true")
    p.add_argument("--json", type=Path, default=Path("cpu_path_vs_llamacpp.json"))
    p.add_argument("--md", type=Path, help="append the markdown table here")
    p.add_argument("--llama-log", type=Path, help="llama-bench's stderr goes here")
    args = p.parse_args()

    load_ggml()  # fail early if the libraries are missing
    machine = {"platform": platform.platform(), "processor": cpu_model(), "load_avg_at_start": os.getloadavg(),
               "logical_cores": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
               "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "ggml": ggml_version(),
               "ggml_lib_dir": str(load_ggml().lib_dir),
               "avx512": bool(load_ggml().cpu.ggml_cpu_has_avx512())}
    gguf = GGUFFile(args.model)
    facts = model_facts(gguf)
    print(json.dumps(facts), file=sys.stderr, flush=True)
    label = args.label or args.model.stem

    llama = run_llama_bench(args.llama_bench, args.model, args.threads, args.n_gen, args.reps, facts,
                            args.llama_log) if args.llama_bench else []
    for r in llama:
        print(f"  llama.cpp {r['layout']:9} {r['tok_s']:7.2f} tok/s  {r['gb_s_experts']:6.1f} GB/s experts  "
              f"{r['gb_s_all']:6.1f} GB/s all", file=sys.stderr, flush=True)
    ours = []
    for layout in args.layouts.split(","):
        r = run_ours(gguf, facts, args.threads, layout == "repack", args.seconds, args.reps)
        ours.append(r)
        print(f"  ours      {r['layout']:9} {r['gb_s']:6.1f} GB/s ({r['gb_s_min']:.1f}-{r['gb_s_max']:.1f}), "
              f"{r['ms_per_call']:.3f} ms/call, prepare {r['prepare_s']:.1f} s", file=sys.stderr, flush=True)
    overhead = None if args.no_overhead else run_overhead(args.threads)

    md = markdown(label, facts, llama, ours, overhead, machine)
    print(md)
    args.json.write_text(json.dumps({"label": label, "machine": machine, "model": str(args.model), "facts": facts,
                                     "llama_bench": llama, "ours": ours, "overhead_t1_us": overhead,
                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    if args.md:
        with args.md.open("a") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
