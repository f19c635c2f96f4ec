"""The built-in demo: a tiny random-weight MoE checkpoint, converted and run.

Until edge-moe's own executor lands, "run" means: our GGUF reader validates the
file and llama.cpp (llama-cpp-python) loads it and greedily generates a few
tokens. The weights are random, so the text is gibberish by design.
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
             n_tokens: int = 16) -> int:
    try:
        from edge_moe.converters.tiny_checkpoints import TINY_ARCHS, make_tiny_checkpoint
    except ImportError as e:
        raise EdgeMoeError(f"the demo builds its model with transformers: pip install 'edge-moe[demo]' ({e})") \
            from None
    from edge_moe.converters.hf_to_gguf import convert
    from edge_moe.model_summary import describe_gguf

    if arch not in TINY_ARCHS:
        raise EdgeMoeError(f"unknown demo architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    root = Path(workdir) if workdir else default_workdir()
    root.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model_dir = make_tiny_checkpoint(arch, root / f"hf-{arch}", seed=0)
    print(f"[1/3] tiny {arch} checkpoint (random weights, seed 0): {model_dir} "
          f"({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    gguf_path = convert(model_dir, root / f"demo-{arch}-{outtype}.gguf", outtype=outtype, progress=False)
    print(f"[2/3] converted to {outtype}: {gguf_path} ({time.perf_counter() - t0:.1f} s)")
    print(describe_gguf(gguf_path))

    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=256, n_threads=None, verbose=False)
    try:
        prompt = "The quick brown fox"
        tokens = llm.tokenize(prompt.encode(), add_bos=True)
        t0 = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, top_k=1)
        dt = time.perf_counter() - t0
        n = out["usage"]["completion_tokens"]
        print(f"[3/3] llama.cpp loaded it and generated {n} tokens greedily in {dt:.2f} s "
              f"(prompt {len(tokens)} tokens; random weights, so gibberish):")
        print(f"      {prompt!r} -> {out['choices'][0]['text']!r}")
    finally:
        llm.close()
    return 0
