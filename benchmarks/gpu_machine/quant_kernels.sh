#!/usr/bin/env bash
# On the GPU machine: the quantized-kernel tests on CUDA, then their bandwidth benchmark
# (a rows/warps sweep for Q4_0 and Q8_0, then every type at the defaults). Carry [".gpu"].
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=/tmp/site
if [ ! -e $SITE/llama_cpp ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE .gpu/whl/*.whl || exit 1
  (cd .gpu/lcp && CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-build-isolation --no-deps --no-index --target $SITE . ) > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; exit 1; }
fi
ln -sfn ../converters edge_moe/converters; ln -sfn ../tui edge_moe/tui; ln -sfn ../profiles edge_moe/profiles_data
export PYTHONPATH=$PWD:$SITE
python3 -m pytest -p no:cacheprovider -q tests/test_quant_kernels.py 2>&1 | tee "$OUT/quant_tests.log" | tail -5
for rows in 4 8 16 32; do for warps in 2 4 8; do
  EDGE_MOE_QROWS=$rows EDGE_MOE_QWARPS=$warps python3 -m benchmarks.quant_kernels_bench --types Q4_0,Q8_0 2>&1 | tee -a "$OUT/sweep.log"
done; done
python3 -m benchmarks.quant_kernels_bench --json "$OUT/quant_bench.json" 2>&1 | tee "$OUT/quant_bench.log"
