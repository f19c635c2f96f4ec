#!/usr/bin/env bash
# Run HERE (not on the GPU machine): copy the parts of llama-cpp-python 0.3.36's vendored llama.cpp
# that a `llama-bench` build needs into a git-ignored folder that the device tool can carry
# (the whole sdist is 76 MB, over the 64 MiB a call may carry; the slim tree is ~25 MB).
# ggml's CPU and CUDA backends are kept (ggml-cuda is 3 MB): the same tree builds the CPU-only
# llama-bench (cpu_path_vs_llamacpp.sh) and the CUDA one (build_llama_cuda.sh).
#
#   benchmarks/gpu_machine/make_llama_src.sh [SDIST_DIR] [DEST]
#   (defaults: /work/dl/llama_cpp_python-0.3.36, .carry/llama_src; DEST is added to .git/info/exclude)
#
# Also copies the two vocab GGUFs that benchmarks/synthetic_gguf.py takes its tokenizers from
# (into DEST/models/), and puts the gguf wheel (pure Python; the GPU machine lacks gguf) in DEST/../whl/.
set -euo pipefail
SDIST=${1:-/work/dl/llama_cpp_python-0.3.36}
DEST=${2:-.carry/llama_src}
SRC=$SDIST/vendor/llama.cpp
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
top=$(echo "$DEST" | cut -d/ -f1)
EXCLUDE=$(git rev-parse --git-path info/exclude)  # the shared one, also from a worktree
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF "/$top/" "$EXCLUDE" 2>/dev/null || echo "/$top/" >> "$EXCLUDE"

rm -rf "$DEST" && mkdir -p "$DEST"
cp -p "$SRC"/CMakeLists.txt "$SRC"/LICENSE "$DEST"/
cp -a "$SRC"/cmake "$SRC"/include "$SRC"/src "$SRC"/common "$DEST"/
[ -d "$SRC"/licenses ] && cp -a "$SRC"/licenses "$DEST"/
# vendor/: everything its CMakeLists adds (miniaudio is 4 MB but vendor/CMakeLists adds it unconditionally)
cp -a "$SRC"/vendor "$DEST"/
# ggml: the CPU and CUDA backends
mkdir -p "$DEST"/ggml/src
cp -p "$SRC"/ggml/CMakeLists.txt "$DEST"/ggml/
cp -a "$SRC"/ggml/cmake "$SRC"/ggml/include "$DEST"/ggml/
for f in "$SRC"/ggml/src/*; do
  case "$(basename "$f")" in
    ggml-cpu|ggml-cuda) cp -a "$f" "$DEST"/ggml/src/ ;;
    ggml-*) [ -d "$f" ] || cp -p "$f" "$DEST"/ggml/src/ ;;  # other backend folders stay behind
    *) cp -a "$f" "$DEST"/ggml/src/ ;;
  esac
done
# tools/: llama-bench only (the stock tools/CMakeLists.txt adds every tool)
mkdir -p "$DEST"/tools
cp -a "$SRC"/tools/llama-bench "$DEST"/tools/
echo 'add_subdirectory(llama-bench)' > "$DEST"/tools/CMakeLists.txt
# tokenizers for the synthetic GGUFs
mkdir -p "$DEST"/models
cp -p "$SRC"/models/ggml-vocab-llama-spm.gguf "$SRC"/models/ggml-vocab-qwen2.gguf "$DEST"/models/
# gguf for the GPU machine's Python (numpy, pyyaml, requests, tqdm are there already)
WHL=$(dirname "$DEST")/whl
mkdir -p "$WHL"
ls "$WHL"/gguf-0.19.0-*.whl >/dev/null 2>&1 ||
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHL" gguf==0.19.0
du -sh "$DEST" "$WHL"
