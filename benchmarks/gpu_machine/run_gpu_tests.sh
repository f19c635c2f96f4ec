#!/usr/bin/env bash
# On the GPU machine (device tool): build llama-cpp-python (CPU, for the ggml libraries and the
# llama.cpp reference) from a slimmed sdist carried in .gpu/lcp, install the carried wheels and
# edge-moe, then run the CUDA parity tests and the GPU-only tests. Logs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE .gpu/whl/*.whl || exit 1
export PYTHONPATH=$SITE
t0=$(date +%s)
(cd .gpu/lcp && CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install -q --no-build-isolation --no-deps --no-index --target $SITE . ) > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
echo "llama-cpp-python built in $(( $(date +%s) - t0 )) s"
# run from the source tree: make converters/ and tui/ importable as edge_moe.* (as package-dir does)
ln -sfn ../converters edge_moe/converters; ln -sfn ../tui edge_moe/tui; ln -sfn ../profiles edge_moe/profiles_data
export PYTHONPATH=$PWD:$SITE
python3 -c "import torch, llama_cpp; from edge_moe.ggml_lib import load_ggml; load_ggml(); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ -z "${SKIP_TESTS:-}" ]; then
python3 -m pytest -p no:cacheprovider -q -s tests/test_gpu_executor.py tests/test_gpu_slots.py tests/test_gpu_experts_stream.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
EDGE_MOE_REFERENCE=${EDGE_MOE_REFERENCE:-} python3 -m pytest -p no:cacheprovider -q -s tests/test_executor_parity.py -k "${PARITY_FILTER:-cuda}" 2>&1 | tee "$OUT/parity_cuda.log" | tail -15
fi
# fills from an mmapped file, end to end (staging copy + DMA): old single-thread path vs the pool
python3 benchmarks/fill_bench.py --device cuda --threads 1 2 4 8 16 --json "$OUT/fill_bench.json" 2>&1 | tee "$OUT/fill_bench.log"
# the CLI end to end on CUDA with a partial cache (the demo model)
python3 -m edge_moe.cli run -n 64 --temp 0 --device cuda --gpu-budget 0.004 -t 8 2>&1 | tail -7 | tee "$OUT/cli_cuda.log"
# zero tuning: no cache flags, the planner sizes the cache from measured figures (measured once, cached)
python3 -m edge_moe.cli run -n 64 --temp 0 2>&1 | tail -6 | tee "$OUT/cli_planned.log"
python3 -m edge_moe.cli profile -m "$(python3 -c 'from edge_moe.demo import ensure_demo_model; print(ensure_demo_model())')" \
  2>&1 | tee "$OUT/profile.log" | tail -40
