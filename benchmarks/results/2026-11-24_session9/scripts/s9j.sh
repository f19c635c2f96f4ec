#!/usr/bin/env bash
# session 9 call J: review mends (one router product for both fused routings; cpu_call_seconds shared): CUDA tests
source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 300 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_route_kernels.py tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_bench.py tests/test_run_figure.py tests/test_planner.py -k "route or decode_graphs or resident or quantized_dense or pinned or (gpu_executor and not no_memory_growth) or test_bench or (test_run_figure and not run_records and not run_on_the_cpu) or test_planner" 2>&1 | tee $OUT/gpu_tests_review.txt | tail -3
echo "total $((SECONDS-T0)) s"
