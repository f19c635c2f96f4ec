"""benchmarks/synthetic_gguf.py: its random models route naturally like a real model at a glance
(different tokens pick different experts, each expert about equally often), in edge-moe's executor,
and llama.cpp runs them.

The files are cut down (few layers, narrow, 1000-token vocabulary) but keep the real shapes'
expert counts and top-k; the writer scales every matrix by its row length, so a narrow file routes
like the full-size one, and one test keeps Qwen3's real width. The old writer (uniform 4-bit
values: every weight had a mean of -d/2) sent every token to the same experts from layer 1 or 2 on.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

from benchmarks.synthetic_gguf import SHAPES, ModelShape, plan_tensors, random_q4_0_pool, weight_std, write_model
from edge_moe.executor import ExecutorConfig, HybridModel

PROMPT, DECODE = 16, 16  # prompt tokens, then one-token decode steps (as `edge-moe bench` feeds them)

# narrow cut-down files; llama's head_dim must be n_embd / n_head
SMALL = {
    "mixtral": dict(n_layer=8, n_embd=256, n_ff=64, n_ff_exp=64, n_head=4, n_head_kv=2, head_dim=64),
    "qwen3": dict(n_layer=8, n_embd=256, n_ff=32, n_ff_exp=32, n_head=4, n_head_kv=2, head_dim=64),
    "qwen3-wide": dict(n_layer=2, n_ff=32, n_ff_exp=32, n_head=4, n_head_kv=1),  # Qwen3's n_embd 2048
}


def _shape(name: str) -> ModelShape:
    return replace(SHAPES[name.split("-")[0]], n_vocab=1000, n_ctx=64, **SMALL[name])


def _write(name: str, tmp_path: Path) -> tuple[ModelShape, Path]:
    s = _shape(name)
    try:
        return s, write_model(s, tmp_path / f"{name}.gguf", f"test-{name}", seed=0, progress=False)
    except FileNotFoundError as e:  # llama.cpp's vocab-only GGUFs are not here
        pytest.skip(str(e))


def _natural_routes(path: Path) -> dict[int, np.ndarray]:
    """layer -> expert ids [PROMPT + DECODE, k] that the model's own router picked, random tokens."""
    model = HybridModel(path, ExecutorConfig(device="cpu", n_threads=1, n_ctx=64))
    try:
        routes: dict[int, list[np.ndarray]] = {}
        model.on_route.append(lambda layer, logits, ids, hit: routes.setdefault(layer, []).append(ids.copy()))
        tokens = np.random.default_rng(1).integers(0, model.cfg.n_vocab, PROMPT + DECODE).tolist()
        logits = model.forward(tokens[:PROMPT])
        for t in tokens[PROMPT:]:
            logits = model.forward([t])
        assert np.isfinite(logits.numpy()).all()
    finally:
        model.close()
    return {layer: np.concatenate(ids) for layer, ids in routes.items()}


def _diversity(ids: np.ndarray, n_expert: int) -> tuple[float, int, float]:
    """(normalized entropy of the expert usage, distinct expert sets among tokens, mean fraction of
    its experts a decode step shares with the previous one)."""
    p = np.bincount(ids.ravel(), minlength=n_expert) / ids.size
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(n_expert))
    distinct = len({tuple(sorted(r)) for r in ids})
    d = ids[PROMPT - 1:]
    overlap = float(np.mean([len(set(a) & set(b)) for a, b in zip(d[:-1], d[1:])]) / ids.shape[1])
    return entropy, distinct, overlap


@pytest.mark.parametrize("name", list(SMALL))
def test_natural_routing_is_diverse(name: str, tmp_path: Path) -> None:
    # Measured at every layer (seed 0, 32 tokens). Mixtral-like (8 experts, top-2; picks at random
    # would give entropy ~0.97, ~19 sets, overlap 0.25): entropy 0.95-0.99, 16-22 sets, overlap
    # 0.12-0.41; the old writer (uniform nibbles): 0.33-0.45, 1-3 sets, overlap 1.0 from layer 2 on.
    # Qwen3-like, narrow or at its real width (128 experts, top-8; random: ~0.93, 32 sets, 0.06):
    # entropy 0.93-0.95, 32 sets, overlap 0.04-0.09; the old writer: 0.43-0.45, 1-5 sets, overlap
    # 0.92-1.0 from layer 3 on (real width: 0.45, 3 sets, 0.95 at layer 1).
    s, path = _write(name, tmp_path)
    try:
        routes = _natural_routes(path)
    finally:
        path.unlink()
    assert sorted(routes) == list(range(s.n_layer))
    n_sets = math.comb(s.n_expert, s.n_expert_used)  # expected distinct sets if every token picked at random:
    random_sets = n_sets * (1 - (1 - 1 / n_sets) ** (PROMPT + DECODE))  # 19.3 (Mixtral), 32 (Qwen3)
    for layer, ids in routes.items():
        entropy, distinct, overlap = _diversity(ids, s.n_expert)
        print(f"{name} layer {layer}: usage entropy {entropy:.3f}, {distinct} distinct sets, overlap {overlap:.2f}")
        assert entropy > 0.8, (layer, entropy)
        assert distinct >= 0.5 * random_sets, (layer, distinct)
        assert overlap < 0.6, (layer, overlap)  # uniform random picks: k / n_expert (0.25, 0.06)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_full_size_weights_have_zero_mean_and_unit_gain(shape: str) -> None:
    """At the real shapes' row lengths, without writing the file: the weights of every matrix have
    mean ~0, so no direction is amplified above the others (the old writer's mean of -d/2 made the
    all-ones direction ~7x stronger at 4096 columns: every hidden state collapsed onto it), and
    each matvec keeps its input's rms (attention output 10x less)."""
    rng = np.random.default_rng(0)
    plan = [t for t in plan_tensors(replace(SHAPES[shape], n_layer=1)) if t.ggml_type == T.Q4_0]
    for row, std in sorted({(t.shape[0], weight_std(t)) for t in plan}):
        w = dequantize(random_q4_0_pool(rng, 256 * row // 32, std), T.Q4_0).reshape(256, row)  # 256 rows
        x = rng.standard_normal(row)
        gain_ones = np.linalg.norm(w @ np.ones(row)) / np.sqrt(row)
        gain_random = np.linalg.norm(w @ x) / np.linalg.norm(x)
        assert abs(w.mean()) < 0.02 * w.std(), (row, w.mean(), w.std())
        assert 0.7 < gain_ones / gain_random < 1.4, (row, gain_ones, gain_random)
        assert abs(w.std() / std - 1) < 0.05, (row, w.std(), std)


def test_llama_cpp_runs_the_file(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tests.reference import llama_cpp_logits

    for name in ("mixtral", "qwen3"):
        _, path = _write(name, tmp_path)
        tokens = np.random.default_rng(2).integers(0, 1000, 8).tolist()
        ref = llama_cpp_logits(path, tokens)  # [T, V], in a subprocess
        model = HybridModel(path, ExecutorConfig(device="cpu", n_threads=1, n_ctx=64))
        try:
            ours = model.forward(tokens).numpy()
        finally:
            model.close()
        assert np.isfinite(ref).all() and ref.std() > 0.1
        corr = np.corrcoef(ref.ravel(), ours.ravel())[0, 1]
        assert corr > 0.98, (name, corr)  # 0.9986 and 0.998: llama.cpp reads the file as we do
