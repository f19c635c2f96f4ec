#!/usr/bin/env bash
# session 13 call E: CUDA tests of the final prefill-graph code (forced ids), zero-copy probe
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
env PYTHONPATH=$PP timeout 120 python3 $S/zero_copy_probe.py 2>&1 | grep -v -i warn | tee $OUT/zero_copy_probe.txt
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 300 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py tests/test_gpu_executor.py tests/test_bench.py -k "(graph or resident or grouped or gpu_executor or cuda or bench) and not no_memory_growth" 2>&1 | tee $OUT/gpu_tests.txt | tail -4
echo "total $((SECONDS-T0)) s"
