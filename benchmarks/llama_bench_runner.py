"""llama.cpp at a VRAM budget: the --n-cpu-moe placement that fits, run by llama-bench, VRAM measured.

    python -m benchmarks.llama_bench_runner --llama-bench build/bin/llama-bench --model M.gguf \\
        --budgets 6,12,24 --threads 16 --reps 3 --label mixtral --out llama_mixtral.json

Placement: `-ngl 99 --n-cpu-moe N` keeps the experts of the first N layers in host memory and
puts everything else on the GPU (token embeddings stay on the host in llama.cpp). Its VRAM is

    vram(N) = base + sum over layers i >= N of expert_bytes(i)

where base (the GPU-resident dense weights, the KV cache, compute buffers and the CUDA
context) is measured once: a probe run with N = n_layer (no expert on the GPU). For each budget
the smallest N with vram(N) <= budget is chosen (as many expert layers on the GPU as fit), both
llama-bench tests run, and the VRAM they really used (NVML, sampled every 50 ms) is checked:
if it exceeds the budget, N goes up by one and the tests run again. Without a GPU (tests,
`--ngl 0`) there is no probe and no VRAM: the placement arithmetic still runs.

Tests, same as `edge-moe bench`: pp = `-p 512 -n 0` (prefill from an empty context) and
tg = `-p 0 -n 128 -d 512` (128 decode steps after 512 tokens of context), `-r reps`, same
threads. llama.cpp's placement is static, so its speed does not depend on routing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edge_moe.gguf_file import GGUFFile  # noqa: E402

GIB = 2**30


@dataclass(frozen=True)
class Placement:
    budget_bytes: int
    n_cpu_moe: int | None  # None: not even the dense part fits
    predicted_bytes: int | None
    expert_layers_on_gpu: int


def expert_bytes_per_layer(model: str | Path) -> list[int]:
    """Bytes of each layer's routed-expert tensors (what --n-cpu-moe moves between host and GPU)."""
    with GGUFFile(model) as g:
        n_layer = 1 + max(int(n.split(".")[1]) for n in g.tensors if n.startswith("blk."))
        out = [0] * n_layer
        for name, t in g.tensors.items():
            if name.startswith("blk.") and "_exps." in name:
                out[int(name.split(".")[1])] += t.nbytes
    return out


def estimate_base_bytes(model: str | Path, n_ctx: int, n_ubatch: int = 512, context_bytes: int = 512 << 20) -> int:
    """First guess of vram(n_layer) from tensor sizes, before a probe measures it: GPU-resident
    dense tensors (all but token_embd and experts) + f16 KV + logits of a ubatch + CUDA context."""
    with GGUFFile(model) as g:
        arch = g.get("general.architecture", str)
        n_layer = g.get(f"{arch}.block_count", int)
        n_head_kv = g.get(f"{arch}.attention.head_count_kv", int)
        n_head = g.get(f"{arch}.attention.head_count", int)
        n_embd = g.get(f"{arch}.embedding_length", int)
        head_dim = g.metadata[f"{arch}.attention.key_length"].value if f"{arch}.attention.key_length" in g.metadata \
            else n_embd // n_head
        dense = sum(t.nbytes for n, t in g.tensors.items() if "_exps." not in n and n != "token_embd.weight")
        n_vocab = g.tensors["token_embd.weight"].shape[1]
    kv = 2 * n_layer * n_ctx * n_head_kv * head_dim * 2
    return dense + kv + n_ubatch * n_vocab * 4 + context_bytes


def choose_n_cpu_moe(budget_bytes: int, base_bytes: int, layer_bytes: list[int]) -> Placement:
    """The smallest N (most expert layers on the GPU) with base + sum(layer_bytes[N:]) <= budget."""
    n_layer = len(layer_bytes)
    for n in range(n_layer + 1):
        need = base_bytes + sum(layer_bytes[n:])
        if need <= budget_bytes:
            return Placement(budget_bytes, n, need, n_layer - n)
    return Placement(budget_bytes, None, None, 0)


class VramSampler:
    """Peak NVML memory of a process (or, when NVML does not list its pid, the device's growth
    over the value before the run), sampled in a thread every `period` seconds."""

    def __init__(self, period: float = 0.05) -> None:
        self.period, self.pid = period, None
        self.peak_process: int | None = None
        self.peak_delta: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._before = self._device_used()
        except Exception:
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def _device_used(self) -> int:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                delta = self._device_used() - self._before
                self.peak_delta = max(self.peak_delta or 0, delta)
                for h in self._handles:
                    for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(h):
                        if p.pid == self.pid and p.usedGpuMemory is not None:
                            self.peak_process = max(self.peak_process or 0, int(p.usedGpuMemory))
            except Exception:
                pass
            time.sleep(self.period)

    def start(self, pid: int) -> None:
        if self.available:
            self.pid = pid
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> int | None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return self.peak_process if self.peak_process is not None else self.peak_delta


def run_llama_bench(exe: str | Path, args: list[str], log: Path | None = None) -> tuple[list[dict], int | None, float]:
    """(llama-bench's JSON records, peak VRAM bytes or None, wall seconds)."""
    cmd = [str(exe), *args, "-o", "json"]
    sampler = VramSampler()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler.start(proc.pid)
    out, err = proc.communicate()
    vram = sampler.stop()
    wall = time.perf_counter() - t0
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{err}\n")
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(f"llama-bench failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return json.loads(out), vram, wall


def _summary(rec: dict) -> dict[str, Any]:
    return {"mean": rec["avg_ts"], "std": rec["stddev_ts"], "n": len(rec.get("samples_ts", [])),
            "samples": rec.get("samples_ts", [])}


def bench_budget(exe: str, model: str, placement: Placement, threads: int, reps: int, ngl: int, n_prompt: int,
                 n_gen: int, log: Path | None) -> dict[str, Any]:
    common = ["-m", model, "-ngl", str(ngl), "-t", str(threads), "-r", str(reps)]
    if placement.n_cpu_moe is not None and ngl > 0:
        common += ["-ncmoe", str(placement.n_cpu_moe)]
    pp, vram_pp, wall_pp = run_llama_bench(exe, common + ["-p", str(n_prompt), "-n", "0"], log)
    tg, vram_tg, wall_tg = run_llama_bench(exe, common + ["-p", "0", "-n", str(n_gen), "-d", str(n_prompt)], log)
    vrams = [v for v in (vram_pp, vram_tg) if v is not None]
    return {"n_cpu_moe": placement.n_cpu_moe, "expert_layers_on_gpu": placement.expert_layers_on_gpu,
            "predicted_vram_bytes": placement.predicted_bytes, "peak_vram_bytes": max(vrams) if vrams else None,
            "prefill_tps": _summary(pp[0]), "decode_tps": _summary(tg[0]), "wall_seconds": wall_pp + wall_tg,
            "llama_bench": {"pp": pp[0], "tg": tg[0]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--budgets", default="6,12,24", help="VRAM budgets in GiB, comma separated")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ngl", type=int, default=99, help="99: GPU offload with --n-cpu-moe; 0: CPU only (tests)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, required=True, help="JSON (an existing file's budgets are kept: resumable)")
    ap.add_argument("--log", type=Path, default=None, help="append llama-bench's stderr here")
    args = ap.parse_args(argv)
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
        if not budgets or any(not b > 0 for b in budgets):
            raise ValueError
    except ValueError:
        ap.error(f"--budgets must be positive GiB values separated by commas, got {args.budgets!r}")
    for path, what in ((args.llama_bench, "llama-bench"), (args.model, "model")):
        if not Path(path).is_file():
            ap.error(f"{what} {path}: no such file")
    layer_bytes = expert_bytes_per_layer(args.model)
    n_layer = len(layer_bytes)
    n_ctx = args.n_prompt + args.n_gen
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.update({"engine": "llama.cpp", "label": args.label, "model": args.model, "threads": args.threads,
                   "n_layer": n_layer, "expert_bytes_per_layer": layer_bytes,
                   "estimated_base_bytes": estimate_base_bytes(args.model, n_ctx)})
    result.setdefault("budgets", {})
    base = result.get("measured_base_bytes")
    gpu = args.ngl > 0 and VramSampler().available
    if gpu and base is None:  # probe: every expert on the host, the tg test's context
        _, base, wall = run_llama_bench(args.llama_bench, ["-m", args.model, "-ngl", str(args.ngl), "-ncmoe",
                                        str(n_layer), "-t", str(args.threads), "-r", "1", "--no-warmup",
                                        "-p", "0", "-n", "1", "-d", str(n_ctx - 1)], args.log)
        result["measured_base_bytes"] = base
        print(f"probe: base VRAM {base / GIB:.2f} GiB measured "
              f"(estimated {result['estimated_base_bytes'] / GIB:.2f}) in {wall:.0f} s", file=sys.stderr)
    base = base if base is not None else result["estimated_base_bytes"]
    for b in budgets:
        placement = choose_n_cpu_moe(int(b * GIB), base, layer_bytes)
        if args.ngl == 0:  # CPU only: no placement (tests)
            placement = Placement(int(b * GIB), n_layer, None, 0)
        if placement.n_cpu_moe is None and gpu:
            result["budgets"][f"{b:g}"] = {"error": f"the dense part alone ({base / GIB:.2f} GiB) exceeds {b:g} GiB"}
            continue
        for _ in range(3):
            row = bench_budget(args.llama_bench, args.model, placement, args.threads, args.reps, args.ngl,
                               args.n_prompt, args.n_gen, args.log)
            used = row["peak_vram_bytes"]
            if used is None or used <= placement.budget_bytes or placement.n_cpu_moe in (None, n_layer):
                break
            n = placement.n_cpu_moe + 1  # measured over budget: one more expert layer on the host
            placement = Placement(placement.budget_bytes, n, base + sum(layer_bytes[n:]), n_layer - n)
        row["budget_bytes"] = int(b * GIB)
        row["within_budget"] = None if row["peak_vram_bytes"] is None else row["peak_vram_bytes"] <= row["budget_bytes"]
        result["budgets"][f"{b:g}"] = row
        vram = "-" if row["peak_vram_bytes"] is None else f"{row['peak_vram_bytes'] / GIB:.2f} GiB"
        print(f"{args.label} {b:g} GiB: -ncmoe {placement.n_cpu_moe} ({placement.expert_layers_on_gpu} expert layers "
              f"on the GPU), VRAM {vram}: pp {row['prefill_tps']['mean']:.1f} tok/s, "
              f"tg {row['decode_tps']['mean']:.2f} tok/s ({row['wall_seconds']:.0f} s)", file=sys.stderr)
        args.out.write_text(json.dumps(result, indent=1))  # after every budget: a cut-off call keeps its rows
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
