"""Shared fixtures: tiny checkpoints and their GGUFs, built once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels can only run in Triton's interpreter, which must be chosen
# before Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("EDGE_MOE_QROWS", "64")  # fewer, larger programs: the interpreter pays per program
    os.environ.setdefault("EDGE_MOE_QROWS_DEQUANT", "32")

from edge_moe.converters.tiny_checkpoints import TINY_ARCHS, make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """arch -> directory of a deterministic tiny HF checkpoint (seed 0), built once."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = make_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"hf-{arch}"), seed=0)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint: Callable[[str], Path],
              tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """(arch, outtype) -> our converter's GGUF of the tiny checkpoint, built once."""
    from edge_moe.converters.hf_to_gguf import convert

    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, outtype: str) -> Path:
        if (arch, outtype) not in cache:
            out = tmp_path_factory.mktemp(f"gguf-{arch}-{outtype}") / f"{arch}-{outtype}.gguf"
            cache[(arch, outtype)] = convert(tiny_checkpoint(arch), out, outtype=outtype, progress=False)
        return cache[(arch, outtype)]

    return get


ALL_ARCHS = TINY_ARCHS
