"""Correctness chain, step 2: our converter's GGUF run by llama.cpp gives transformers' logits.

Error metric: max |llama.cpp - transformers| over a position's vocabulary,
divided by the standard deviation of the transformers logits (a fraction of the
logit spread). Three kinds of check, bounds measured on these tiny models
(observed maxima in brackets) and kept with headroom; see README "Correctness":

1. Float outputs against the original checkpoint, every position until the
   first router near-tie:  F32 3e-3 [1.0e-3], F16 1e-2 [3.5e-3], BF16 4e-2 [2.2e-2].
2. Quantized outputs against a *pre-rounded* checkpoint (weights replaced by
   what the type can store, tests/reference.py): the weights are then identical
   on both sides and only ggml's Q8 quantisation of activations remains, so the
   layout of every quantized tensor is checked tightly:  Q8_0 and Q4_0 6e-2
   [4.7e-2], Q4_K 1e-1 [6.2e-2], Q6_K 8e-2 [5.1e-2], Q5_K 2.5e-1 [1.5e-1]
   (the K-quants are not exactly idempotent, so some weight rounding remains).
3. Quantized outputs against the original checkpoint, the looser bound a user
   sees: median over positions of the error, Q8_0 1e-1 [4.6e-2], Q4_0 8e-1
   [6.0e-1]. (Random tiny weights are hard on 4-bit blocks; real models fare better.)

Router near-ties (checks 1 and 2): from the first token whose top-k router margin
is below `tau` on, a different expert may legitimately be chosen, changing that
token and all later ones; those positions are not compared, and the test asserts
that most positions are, so it cannot pass vacuously.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_moe.converters.hf_to_gguf import convert
from edge_moe.converters.tiny_checkpoints import TINY_ARCHS
from tests.reference import HFRun, first_near_tie, hf_forward, llama_cpp_logits, preround_checkpoint

T_TOKENS = 24
MIN_COMPARED = T_TOKENS // 2
# outtype -> (router margin tau, bound)
FLOAT_BOUNDS = {"f32": (1e-2, 3e-3), "f16": (2e-2, 1e-2), "bf16": (5e-2, 4e-2)}
PREROUNDED_BOUNDS = {"q8_0": (5e-2, 6e-2), "q4_0": (5e-2, 6e-2), "q4_k": (8e-2, 1e-1),
                     "q6_k": (8e-2, 8e-2), "q5_k": (1e-1, 2.5e-1)}
LOOSE_MEDIAN_BOUNDS = {"q8_0": 1e-1, "q4_0": 8e-1}

SELECTION_TRIES = 20
_SELECTED: dict[tuple[str, str, float], tuple[list[int], HFRun]] = {}


def _select_input(model_dir: Path, key: tuple[str, str], tau: float) -> tuple[list[int], HFRun]:
    """A deterministic input whose first MIN_COMPARED + 2 tokens have no router margin below
    `tau`, with the transformers reference run on it.

    Chosen from the transformers reference alone (never from llama.cpp's output): a
    random tiny model sometimes ties at token 0, which would leave nothing to compare.
    """
    if (*key, tau) not in _SELECTED:
        n_vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        for seed in range(SELECTION_TRIES):
            rng = np.random.default_rng([TINY_ARCHS.index(key[0]), seed])
            tokens = [int(t) for t in rng.integers(3, min(n_vocab, 500), size=T_TOKENS)]
            run = hf_forward(model_dir, tokens)
            if first_near_tie(run, tau) >= MIN_COMPARED + 2:
                _SELECTED[(*key, tau)] = (tokens, run)
                break
        else:
            raise AssertionError(f"{key}: no input without early router near-ties in {SELECTION_TRIES} tries")
    return _SELECTED[(*key, tau)]


def _normalised_errors(ours: np.ndarray, ref: HFRun) -> np.ndarray:
    """[T] max abs logit error per position over the reference's logit spread."""
    return np.abs(ours - ref.logits).max(-1) / ref.logits.std()


def _check_until_first_tie(ours: np.ndarray, ref: HFRun, tau: float, bound: float, label: str) -> None:
    n = first_near_tie(ref, tau)
    assert n >= MIN_COMPARED, f"{label}: router near-tie at token {n}; too few positions to compare"
    err = _normalised_errors(ours[:n], HFRun(ref.logits[:n], [r[:n] for r in ref.router_logits], ref.top_k))
    print(f"{label}: compared {n}/{T_TOKENS} positions, max normalised error {err.max():.2e}")
    assert err.max() < bound, f"{label}: max normalised logit error {err.max():.3e} >= {bound}"


@pytest.mark.parametrize("outtype", list(FLOAT_BOUNDS))
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_float_gguf_matches_transformers(arch: str, outtype: str, tiny_checkpoint: Callable[[str], Path],
                                         tiny_gguf: Callable[[str, str], Path]) -> None:
    tau, bound = FLOAT_BOUNDS[outtype]
    tokens, ref = _select_input(tiny_checkpoint(arch), (arch, "original"), tau)
    ours = llama_cpp_logits(tiny_gguf(arch, outtype), tokens)
    _check_until_first_tie(ours, ref, tau, bound, f"{arch} {outtype}")


@pytest.mark.parametrize("outtype", list(PREROUNDED_BOUNDS))
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_quantized_gguf_matches_transformers_on_same_weights(
        arch: str, outtype: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    model_dir = preround_checkpoint(tiny_checkpoint(arch), tmp_path / "prerounded", outtype)
    tau, bound = PREROUNDED_BOUNDS[outtype]
    tokens, ref = _select_input(model_dir, (arch, outtype), tau)
    ours = llama_cpp_logits(convert(model_dir, tmp_path / "m.gguf", outtype=outtype, progress=False), tokens)
    _check_until_first_tie(ours, ref, tau, bound, f"{arch} {outtype} (pre-rounded weights)")


@pytest.mark.parametrize("outtype", list(LOOSE_MEDIAN_BOUNDS))
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_quantized_gguf_close_to_original(arch: str, outtype: str, tiny_checkpoint: Callable[[str], Path],
                                          tiny_gguf: Callable[[str, str], Path]) -> None:
    tokens, ref = _select_input(tiny_checkpoint(arch), (arch, "original"), FLOAT_BOUNDS["f32"][0])
    err = _normalised_errors(llama_cpp_logits(tiny_gguf(arch, outtype), tokens), ref)
    print(f"{arch} {outtype} vs original: median {np.median(err):.2e}, max {err.max():.2e}")
    assert np.median(err) < LOOSE_MEDIAN_BOUNDS[outtype]


def test_phimoe_deviation_is_named(tiny_checkpoint: Callable[[str], Path],
                                   tiny_gguf: Callable[[str, str], Path]) -> None:
    """llama.cpp runs Phi-3.5-MoE with RMS norms and softmax top-k routing, where transformers
    uses LayerNorm and sparsemixer. Check 1 applies those two changes to the reference; this
    test shows they are what separates the two (so they are not hiding a converter bug)."""
    model_dir = tiny_checkpoint("phimoe")
    tokens, _ = _select_input(model_dir, ("phimoe", "original"), FLOAT_BOUNDS["f32"][0])
    ours = llama_cpp_logits(tiny_gguf("phimoe", "f32"), tokens)
    adjusted = _normalised_errors(ours, hf_forward(model_dir, tokens))
    plain = _normalised_errors(ours, hf_forward(model_dir, tokens, llama_cpp_semantics=False))
    print(f"phimoe: llama.cpp vs transformers as is {plain.max():.2e}, with the two changes {adjusted.max():.2e}")
    assert adjusted[0] < 3e-3 < plain[0]
