#!/usr/bin/env bash
# On the GPU machine: the quantized-kernel tests and the executor's parity with the Triton kernels
# on CUDA, then the kernels' bandwidth benchmark (a rows/blocks sweep for Q4_0 and Q8_0, then every
# type at the defaults). Carry [".gpu"]. SKIP_TESTS=1 skips the tests.
set -uo pipefail
source "$(dirname "$0")/lcp_setup.sh"
if [ -z "${SKIP_TESTS:-}" ]; then
  python3 -m pytest -p no:cacheprovider -q tests/test_quant_kernels.py 2>&1 | tee "$OUT/quant_tests.log" | tail -3
  EDGE_MOE_REFERENCE=cpu python3 -m pytest -p no:cacheprovider -q -s tests/test_executor_parity.py \
    -k "triton or (cuda and (all-cached or partial-LRU))" 2>&1 | tee "$OUT/parity_triton.log" | grep -E "error|passed|failed" | tail -40
fi
for cfg in ${SWEEP:-"4 4 8" "8 4 8" "16 4 8" "4 4 16" "8 4 16" "16 4 16" "4 4 32" "8 4 32" "8 8 32"}; do
  set -- $cfg
  EDGE_MOE_QROWS=$1 EDGE_MOE_QWARPS=$2 EDGE_MOE_QBLOCKS=$3 python3 -m benchmarks.quant_kernels_bench --types Q4_0,Q8_0 2>&1 | tee -a "$OUT/sweep.log"
done
python3 -m benchmarks.quant_kernels_bench --json "$OUT/quant_bench.json" 2>&1 | tee "$OUT/quant_bench.log"
