#!/usr/bin/env bash
# Installs edge-moe and its test extras into .venv (idempotent).
# llama-cpp-python has no binary wheel on PyPI: it builds from source here (6-10 min on 2 cores the
# first time; pip caches the wheel). Set CMAKE_ARGS for a GPU build (see README); by default we skip
# the multimodal (llava/mtmd) library, which edge-moe does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so that the resolver does not pull a multi-GB CUDA build on a CPU-only machine
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" .venv/bin/python -m pip install -q -e ".[test]"

# llama.cpp's own converter (used by the tests as a reference) ships inside the llama-cpp-python sdist.
SRC=.cache/llama-cpp-python-src
if [ ! -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  mkdir -p .cache/sdist
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d .cache/sdist
  rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
  tar -xzf .cache/sdist/llama_cpp_python-0.3.36.tar.gz -C "$SRC.tmp" --strip-components=1
  mv "$SRC.tmp" "$SRC"
fi
echo "edge-moe installed in .venv"
