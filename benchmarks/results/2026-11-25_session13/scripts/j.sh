#!/usr/bin/env bash
# session 13 call J: zero-copy decode streaming A/B at Qwen3 6 and 12 GiB (forced rules), streaming tests on CUDA
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q tests/test_executor_parity.py tests/test_gpu_experts_stream.py -k "stream and not no_memory_growth" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
for b in 6 12; do env PYTHONPATH=$PP timeout 200 python3 $S/zero_copy_ab.py $WORK/qwen3.gguf $b 2>&1 | grep -v -i warn | tee -a $OUT/zero_copy_ab.txt; done
echo "total $((SECONDS-T0)) s"
