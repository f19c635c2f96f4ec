"""Dense weights as fp16 vs in their GGUF blocks (ExecutorConfig.dense_format): VRAM, speed, logits.

    python -m benchmarks.dense_formats -m MODEL.gguf [--prompt 512] [--tokens 32] [--cache all|none]

For each format: the VRAM the dense weights take (torch.cuda.memory_allocated around
load_dense_weights, against dense_device_bytes, the planner's figure), then a model with every
expert cached (--cache all, when they fit) or none, a prefill of --prompt random tokens
(tok/s) and --tokens decode steps (tok/s, decode graphs on), and the largest logit difference
between the formats over the std of the fp16 logits. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from edge_moe.dense_weights import dense_device_bytes, load_dense_weights
from edge_moe.executor import ExecutorConfig, HybridModel
from edge_moe.expert_cache import CacheConfig
from edge_moe.gguf_file import GGUFFile
from edge_moe.gpu_experts import GpuExpertsConfig
from edge_moe.model_config import read_config


def _dense_vram(path: str, fmt: str) -> tuple[int, int]:
    """(measured, planned) bytes of the dense weights in `fmt` on CUDA at fp16."""
    gguf = GGUFFile(path)
    cfg = read_config(gguf)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    dense = load_dense_weights(gguf, cfg, torch.device("cuda"), torch.float16, fmt)
    torch.cuda.synchronize()
    measured = torch.cuda.memory_allocated() - before
    del dense
    torch.cuda.empty_cache()
    return measured, dense_device_bytes(gguf, cfg, fmt, 2)


def _run(path: str, fmt: str, cache: str, prompt: list[int], feed: list[int]) -> dict[str, object]:
    cfg = read_config(GGUFFile(path))
    experts = (GpuExpertsConfig(CacheConfig(cfg.n_layer, cfg.n_expert), preload="all") if cache == "all" else None)
    model = HybridModel(path, ExecutorConfig(device="cuda", n_ctx=len(prompt) + len(feed) + 8, cache=experts,
                                             dense_format=fmt))
    assert model.dense.format == fmt
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits = [model.forward(prompt)[-1:]]
    torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    for t in feed[:4]:  # graphs captured, caches warm
        logits.append(model.forward([t]))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in feed[4:]:
        logits.append(model.forward([t]))
    torch.cuda.synchronize()
    decode_s = time.perf_counter() - t0
    out = torch.cat(logits).float().cpu().numpy()
    peak = torch.cuda.max_memory_allocated()
    model.close()
    del model
    torch.cuda.empty_cache()
    return {"prefill_tps": len(prompt) / prefill_s, "decode_tps": (len(feed) - 4) / decode_s, "logits": out,
            "peak_allocated": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--cache", choices=["all", "none"], default="all")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    n_vocab = read_config(GGUFFile(args.model)).n_vocab
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, n_vocab, args.prompt).tolist()
    feed = rng.integers(0, n_vocab, args.tokens + 4).tolist()
    results: dict[str, dict[str, object]] = {}
    for fmt in ("fp16", "quantized"):
        measured, planned = _dense_vram(args.model, fmt)
        torch.cuda.reset_peak_memory_stats()
        r = _run(args.model, fmt, args.cache, prompt, feed)
        r |= {"dense_bytes": measured, "dense_bytes_planned": planned}
        results[fmt] = r
        print(f"{fmt:9s}  dense {measured / 2**30:.3f} GiB (planned {planned / 2**30:.3f})  "
              f"prefill {r['prefill_tps']:.0f} tok/s  decode {r['decode_tps']:.1f} tok/s  "
              f"peak allocated {r['peak_allocated'] / 2**30:.2f} GiB", flush=True)
    ref, q = results["fp16"]["logits"], results["quantized"]["logits"]
    err = float(np.abs(ref - q).max() / ref.std())  # type: ignore[operator, union-attr]
    print(f"max |quantized - fp16| / std(fp16 logits) = {err:.2e} (fp16 rounding of activations differs)")
    if args.json:
        for r in results.values():
            r.pop("logits")
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "cache": args.cache, "logit_error": err, **results}, f, indent=1)


if __name__ == "__main__":
    main()
