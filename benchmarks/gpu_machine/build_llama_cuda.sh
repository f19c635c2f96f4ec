#!/usr/bin/env bash
# On the GPU machine: build llama.cpp's llama-bench WITH CUDA (sm_90 only, ~4.5 min on 16 cores) from
# the slim source .carry/llama_src (prepare_bench_carry.sh), into $BUILD (default: $WORK/build-cuda).
# Then, optionally (PACK=1, the default), pack bin/llama-bench and its libraries with xz into $OUT as
# llama_cuda_bin.tar.xz (split in 15 MiB parts .partNN when larger: $OUT returns files <= 16 MiB each,
# 8 at most), so that a later call on a fresh machine can carry them instead of rebuilding:
#   here:  mkdir -p .carry/llama_cuda_bin && cp FILES_AT/llama_cuda_bin.tar.xz* .carry/llama_cuda_bin/
#   there: bench_vs_llamacpp.sh unpacks .carry/llama_cuda_bin/ when it finds no build.
# Env: SRC (.carry/llama_src), WORK (chosen by bench_vs_llamacpp.sh or /root/edge_moe_bench), BUILD,
#      JOBS (16), PACK (1), OUT (the device tool sets it).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SRC=${SRC:-$REPO/.carry/llama_src}
WORK=${WORK:-/root/edge_moe_bench}
BUILD=${BUILD:-$WORK/build-cuda}
JOBS=${JOBS:-16}
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK" "$OUT" "$WORK/logs"
if [ -x "$BUILD/bin/llama-bench" ]; then echo "llama-bench (CUDA) already built in $BUILD"; exit 0; fi
[ -d "$SRC/ggml/src/ggml-cuda" ] || { echo "no $SRC/ggml/src/ggml-cuda: run prepare_bench_carry.sh here and carry .carry/llama_src"; exit 1; }
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
t0=$SECONDS
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CCACHE=OFF \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=ON \
    > "$WORK/logs/cmake-cuda.log" 2>&1 \
  && ninja -C "$BUILD" -j"$JOBS" llama-bench > "$WORK/logs/build-cuda.log" 2>&1 \
  || { tail -40 "$WORK/logs/cmake-cuda.log" "$WORK/logs/build-cuda.log"; echo "CUDA build failed"; exit 1; }
echo "built llama-bench with CUDA in $((SECONDS - t0)) s"
"$BUILD/bin/llama-bench" --list-devices 2>&1 | tail -3
if [ "${PACK:-1}" = 1 ]; then
  t0=$SECONDS
  tar -C "$BUILD" -cf - bin/llama-bench $(cd "$BUILD" && ls bin/*.so* 2>/dev/null) | xz -T0 -6 > "$WORK/llama_cuda_bin.tar.xz"
  size=$(stat -c %s "$WORK/llama_cuda_bin.tar.xz")
  if [ "$size" -le $((15 << 20)) ]; then
    cp "$WORK/llama_cuda_bin.tar.xz" "$OUT/"
  else
    split -b 15M -d "$WORK/llama_cuda_bin.tar.xz" "$OUT/llama_cuda_bin.tar.xz.part"
  fi
  echo "packed binaries: $((size >> 20)) MiB xz in $((SECONDS - t0)) s -> $(cd "$OUT" && ls llama_cuda_bin.tar.xz* | tr '\n' ' ')"
fi
