#!/usr/bin/env bash
# Run HERE, once, before the GPU-machine calls of bench_vs_llamacpp.sh: fill the git-ignored .carry/
# with what the GPU machine lacks (it has no network):
#   .carry/llama_src   slim llama.cpp source with ggml-cpu and ggml-cuda (make_llama_src.sh, ~25 MB)
#   .carry/vocab       the two tokenizer GGUFs synthetic_gguf.py copies (~8 MB)
#   .carry/whl         gguf and platformdirs wheels (pure Python; torch, numpy, psutil, nvidia-ml-py are there)
#   .carry/traces      ../shared/traces/*.npz (the Mixtral routing trace replayed on the Mixtral shape)
# and print the carried size (a call carries at most 64 MiB, the repository's ~10 MiB included).
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
SDIST=${SDIST:-/work/dl/llama_cpp_python-0.3.36}
SHARED=${SHARED:-$ROOT/../shared}
[ -d .carry/llama_src/ggml/src/ggml-cuda ] || bash benchmarks/gpu_machine/make_llama_src.sh "$SDIST" .carry/llama_src
mkdir -p .carry/vocab .carry/whl .carry/traces
cp -p .carry/llama_src/models/ggml-vocab-*.gguf .carry/vocab/
for pkg in gguf==0.19.0 platformdirs; do
  name=${pkg%%=*}
  ls .carry/whl/"$name"-*.whl >/dev/null 2>&1 && continue
  found=$(ls /work/main/.gpu/whl/"$name"-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$found" ]; then cp -p "$found" .carry/whl/; else python3 -m pip download -q --no-deps --only-binary=:all: -d .carry/whl "$pkg"; fi
done
cp -p "$SHARED"/traces/*.npz .carry/traces/ 2>/dev/null || echo "warning: no traces in $SHARED/traces (replay on mixtral will be skipped)"
repo=$(git ls-files -z | du -ch --files0-from=- 2>/dev/null | tail -1 | cut -f1)
du -sh .carry/llama_src .carry/vocab .carry/whl .carry/traces
echo "repository (tracked files): $repo"
echo "carry for the build call:   [\".carry/llama_src\"]"
echo "carry for the bench calls:  [\".carry/llama_src\", \".carry/whl\", \".carry/traces\"]  (or .carry/vocab + .carry/llama_cuda_bin instead of .carry/llama_src once the binaries came back)"
