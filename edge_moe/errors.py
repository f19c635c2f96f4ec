"""Errors a user can act on: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class EdgeMoeError(Exception):
    """Base class of every error edge-moe reports to a user without a traceback."""


class ModelFormatError(EdgeMoeError):
    """A model file (GGUF, safetensors, config.json, tokenizer) is malformed or unsupported."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedModelError(ModelFormatError):
    """A well-formed model of an architecture edge-moe does not run."""


class GgmlLibraryError(EdgeMoeError):
    """The ggml libraries installed by llama-cpp-python are missing or do not match our binding."""
