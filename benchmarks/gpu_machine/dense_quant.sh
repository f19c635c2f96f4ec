#!/usr/bin/env bash
# On the GPU machine: dense weights kept in their GGUF blocks (ExecutorConfig.dense_format). The
# kernel and dense-weight tests, parity on CUDA (decode graphs captured; the default "auto" is
# "quantized" there, so the CUDA runs of test_logits_match_llama_cpp exercise it too), then fp16 vs
# quantized dense weights on a Qwen3-shaped file of LAYERS (4) layers: VRAM, prefill and decode tok/s.
# Carry [".gpu", ".carry/vocab"] (copies of /work/main's). SKIP_TESTS=1 skips the tests.
set -uo pipefail
source "$(dirname "$0")/lcp_setup.sh"
if [ -z "${SKIP_TESTS:-}" ]; then
  python3 -m pytest -p no:cacheprovider -q tests/test_quant_kernels.py tests/test_dense_weights.py tests/test_planner.py \
    2>&1 | tee "$OUT/dense_unit.log" | tail -3
  EDGE_MOE_REFERENCE=cpu python3 -m pytest -p no:cacheprovider -q -s tests/test_executor_parity.py \
    -k "quantized_dense or decode_graphs or resident or (cuda and (partial-LRU or all-cached))" 2>&1 \
    | tee "$OUT/parity_dense.log" | grep -E "error|passed|failed" | tail -60
fi
MODEL=/tmp/qwen3-${LAYERS:-4}L.gguf
[ -e "$MODEL" ] || python3 -m benchmarks.synthetic_gguf --shape qwen3 --out "$MODEL" --layers "${LAYERS:-4}" \
  --vocab-dir .carry/vocab --quiet || exit 1
python3 -m benchmarks.dense_formats -m "$MODEL" --json "$OUT/dense_formats.json" 2>&1 | tee "$OUT/dense_formats.log"
