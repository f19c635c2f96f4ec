"""The built-in demo: a tiny random-weight MoE checkpoint, converted, run by edge-moe
and cross-checked with llama.cpp. The weights are random, so the text is gibberish by design.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge_moe.errors import EdgeMoeError


def default_workdir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edge-moe")) / "demo"


def ensure_demo_model(arch: str = "mixtral", outtype: str = "q8_0", workdir: str | Path | None = None) -> Path:
    """The built-in demo GGUF, built on first use (a tiny random-weight model, seconds to make)."""
    root = Path(workdir) if workdir else default_workdir()
    path = root / f"demo-{arch}-{outtype}.gguf"
    if path.is_file():
        return path
    try:
        from edge_moe.converters.tiny_checkpoints import make_tiny_checkpoint
    except ImportError as e:
        raise EdgeMoeError(f"the demo builds its model with transformers: pip install 'edge-moe[demo]' ({e})") \
            from None
    from edge_moe.converters.hf_to_gguf import convert

    root.mkdir(parents=True, exist_ok=True)
    model_dir = make_tiny_checkpoint(arch, root / f"hf-{arch}", seed=0)
    return convert(model_dir, path, outtype=outtype, progress=False)


def run_demo(arch: str = "mixtral", outtype: str = "q8_0", workdir: str | Path | None = None,
             n_tokens: int = 32) -> int:
    """Build, convert and validate the demo model, then generate with edge-moe (a partial
    expert cache on the accelerator, the misses on the CPU) and check llama.cpp agrees."""
    from edge_moe.converters.tiny_checkpoints import TINY_ARCHS
    from edge_moe.executor import ExecutorConfig, HybridModel
    from edge_moe.expert_cache import CacheConfig
    from edge_moe.generate import GenerationStats, generate
    from edge_moe.gpu_experts import GpuExpertsConfig
    from edge_moe.model_summary import describe_gguf
    from edge_moe.sampling import SamplingParams
    from edge_moe.tokenizer import Tokenizer

    if arch not in TINY_ARCHS:
        raise EdgeMoeError(f"unknown demo architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    t0 = time.perf_counter()
    gguf_path = ensure_demo_model(arch, outtype, workdir)
    print(f"[1/3] demo model (tiny random-weight {arch}, {outtype}): {gguf_path} ({time.perf_counter() - t0:.1f} s)")
    print(describe_gguf(gguf_path))

    tok = Tokenizer(gguf_path)
    prompt = tok.encode("The quick brown fox", add_bos=True)
    cache = GpuExpertsConfig(CacheConfig(2, 3, "LRU"))  # 3 of 8 experts per layer cached
    model = HybridModel(gguf_path, ExecutorConfig(n_ctx=256, cache=cache))
    stats = GenerationStats()
    ours = [e.token for e in generate(model, tok, prompt, n_tokens, SamplingParams(temperature=0.0), stats=stats)]
    c = model.gpu.cache.stats if model.gpu.cache else None
    model.close()
    print(f"[2/3] edge-moe on {model.device}: {len(ours)} tokens greedily, prompt {stats.prompt_tps:.0f} tok/s, "
          f"generation {stats.generation_tps:.0f} tok/s"
          + (f", expert cache hit rate {c.hit_rate:.2f} ({c.fills} fills)" if c else ""))
    print(f"      {tok.decode(prompt)!r} -> {tok.decode(ours)!r}  (random weights: gibberish by design)")

    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=256, verbose=False)
    try:
        ref = []
        for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
            if tok.is_end(t) or len(ref) == n_tokens:
                break
            ref.append(t)
    finally:
        llm.close()
    same = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    verdict = "identical" if ours == ref else (
        f"identical for the first {same} of {len(ours)} tokens (README, Correctness: quantized files may "
        "resolve a near-tie differently)")
    print(f"[3/3] llama.cpp's greedy output on the same file: {verdict}")
    return 0
