"""Benchmark of cache fills (edge_moe/gpu_slots.py SlotStore.fill): GB/s from a memory-mapped file.

Each fill copies one expert's three parts (gate, up, down; Mixtral-8x7B Q4_0 shape by
default: 3 x 33 MB) from a read-only mmap of a scratch file, as the executor fills from
the GGUF's mmap. On a CPU device a fill is the host copy only (the staging copy's cost);
on CUDA it is end to end: staging copy, DMA, until the side stream is idle.

Two source states, both measured:
  cold  a fresh mmap per pass: every page is mapped on first touch (minor page faults),
        as for an expert the process has never read before;
  warm  the same mmap again: pages already mapped (an expert the CPU path has computed).

Configurations: "1 thread" is the old behaviour (the calling thread copies, one DMA per
fill); the others are the chunked, pipelined copy with N pool threads.

    python benchmarks/fill_bench.py                              # this machine, defaults
    python benchmarks/fill_bench.py --device cuda --threads 1 2 4 8 16 --json out.json
    python benchmarks/fill_bench.py --expert-mb 20 --experts 6   # a small box

Not a unit test: numbers depend on the machine (and on its noise: compare within one run).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edge_moe.gpu_slots import CHUNK_BYTES, SlotStore  # noqa: E402

MIXTRAL_EXPERT = 3 * 4096 * 14336 * 18 // 32  # Q4_0: 18 bytes per 32 weights, ~99 MB


def write_scratch(path: Path, nbytes: int) -> None:
    """Random bytes (compressible pages would flatter nothing here, but random is honest)."""
    block = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)


def expert_parts(mm: mmap.mmap, expert: int, part_bytes: tuple[int, ...]) -> list[np.ndarray]:
    """Read-only views of one expert's parts in the mapping (as GGUFFile hands them out)."""
    per = sum(part_bytes)
    out, off = [], expert * per
    for n in part_bytes:
        out.append(np.frombuffer(mm, dtype=np.uint8, count=n, offset=off))
        off += n
    return out


def run_pass(store: SlotStore, path: Path, mm: mmap.mmap | None, n_experts: int,
             part_bytes: tuple[int, ...], rounds: int) -> tuple[float, mmap.mmap]:
    """Seconds for `rounds` fills of every expert in turn; a new mapping when `mm` is None."""
    if mm is None:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    sources = [expert_parts(mm, e, part_bytes) for e in range(n_experts)]
    store.synchronize()
    t0 = time.perf_counter()
    for r in range(rounds):
        for e, parts in enumerate(sources):
            slot = (r * n_experts + e) % store.n_slots
            store.fill(slot, parts)
            store.mark_read(slot)
    store.synchronize()
    dt = time.perf_counter() - t0
    del sources
    return dt, mm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--expert-mb", type=float, default=MIXTRAL_EXPERT / 1e6, help="bytes of one expert, MB")
    ap.add_argument("--experts", type=int, default=8, help="distinct experts in the scratch file")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, 2, 4, 8, os.cpu_count() or 1}))
    ap.add_argument("--chunk-mb", type=float, default=CHUNK_BYTES / 2**20)
    ap.add_argument("--rounds", type=int, default=3, help="warm passes over all experts")
    ap.add_argument("--dir", default=None, help="where the scratch file goes (default: the temp dir)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    expert = int(args.expert_mb * 1e6) // 3 * 3
    part_bytes = (expert // 3,) * 3
    total = expert * args.experts
    chunk = int(args.chunk_mb * 2**20)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = Path(d) / "experts.bin"
        write_scratch(path, total)
        print(f"device {args.device}, expert {expert / 1e6:.1f} MB x {args.experts}, chunk {chunk >> 10} KiB, "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
        print(f"{'config':>22} {'cold GB/s':>10} {'warm GB/s':>10} {'ms/fill':>8}")
        for threads in args.threads:
            # threads == 1 with an unsplit fill: the old single-thread staging copy
            label = "1 thread (old path)" if threads == 1 else f"{threads} threads, pipelined"
            store = SlotStore(args.slots, part_bytes, args.device, copy_threads=max(threads, 1),
                              chunk_bytes=expert + 1 if threads == 1 else chunk)
            run_pass(store, path, None, 1, part_bytes, 1)[1].close()  # warm up: threads, pinned pages
            cold_s, mm = run_pass(store, path, None, args.experts, part_bytes, 1)
            warm_s, _ = run_pass(store, path, mm, args.experts, part_bytes, args.rounds)
            store.close()
            mm.close()
            cold = total / cold_s / 1e9
            warm = total * args.rounds / warm_s / 1e9
            ms = warm_s / (args.experts * args.rounds) * 1e3
            print(f"{label:>22} {cold:10.2f} {warm:10.2f} {ms:8.2f}")
            results.append({"threads": threads, "pipelined": threads > 1, "cold_gbps": cold, "warm_gbps": warm,
                            "warm_ms_per_fill": ms})
    if args.json:
        meta = {"device": args.device, "expert_bytes": expert, "experts": args.experts, "chunk_bytes": chunk,
                "cpus": os.cpu_count(), "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
