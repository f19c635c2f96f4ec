#!/usr/bin/env bash
# session 12 call H: CUDA tests after the bf16 fix: grouped kernels, parity of the grouped / resident / streaming paths
# against llama.cpp, the GPU executor and prefill-streaming tests
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 60 python3 -m pytest -q tests/test_grouped_kernels.py 2>&1 | tee $OUT/gpu_tests_grouped.txt | tail -2
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 300 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py tests/test_gpu_experts_stream.py tests/test_gpu_executor.py -k "grouped or resident or decode-stream or stream or gpu_executor" 2>&1 | tee $OUT/gpu_tests_parity.txt | tail -4
echo "total $((SECONDS-T0)) s"
