#!/usr/bin/env bash
# session 13 call F: CUDA tests after the SlotStore cleanup (slots, streaming, decode-stream parity, GPU executor)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 400 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_gpu_slots.py tests/test_gpu_experts_stream.py tests/test_gpu_executor.py tests/test_executor_parity.py -k "(slot or stream or gpu_executor or graph) and not no_memory_growth" 2>&1 | tee $OUT/gpu_tests.txt | tail -4
echo "total $((SECONDS-T0)) s"
