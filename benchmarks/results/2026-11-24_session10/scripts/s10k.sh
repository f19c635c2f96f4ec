#!/usr/bin/env bash
# session 10 call K: review mends (resident_bases from the host slot table, one y_cpu copy helper): CUDA tests
BUDGET=6 SETUP_S=200 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 240 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_norm_kernels.py tests/test_route_kernels.py tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_gpu_experts_stream.py -k "norm or route or decode_graphs or resident or quantized_dense or pinned or (gpu_executor and not no_memory_growth) or triton" 2>&1 | tee $OUT/gpu_tests_review.txt | tail -3
echo "total $((SECONDS-T0)) s"
