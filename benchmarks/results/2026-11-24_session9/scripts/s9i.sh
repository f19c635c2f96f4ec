#!/usr/bin/env bash
# session 9 call I: host-layer routing in one launch (route_pack): CUDA tests, then ABAB of the per-layer time
# outside the CPU phase (EDGE_MOE_FUSED_ROUTE=0 turns both fused routings off), Qwen3 6 GiB
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 240 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_route_kernels.py tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py -k "route or decode_graphs or resident or quantized_dense or pinned or (gpu_executor and not no_memory_growth)" 2>&1 | tee $OUT/gpu_tests_route_pack.txt | tail -3
echo "tests at $((SECONDS-T0)) s"
for f in 0 1 0 1; do
  [ $((SECONDS-T0)) -gt 500 ] && { echo "skip (time)"; continue; }
  echo "== EDGE_MOE_FUSED_ROUTE=$f"
  env PYTHONPATH=$PP OUTSIDE_PROFILE=0 EDGE_MOE_FUSED_ROUTE=$f timeout 120 python3 scratch/outside.py $WORK/qwen3.gguf 6 2>&1 | grep -E "^decode|prologue|host layer|wall per" | tee -a $OUT/route_pack_ab.txt
done
echo "total $((SECONDS-T0)) s"
