#!/usr/bin/env bash
# session 13 call I: zero-copy probe v2 (kernels skip exactly -1 now), quant-kernel and decode-graph tests after that change
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
for m in pinned "pinned contended" registered; do env PYTHONPATH=$PP timeout 100 python3 $S/zero_copy_probe.py $m 2>&1 | grep -v -i warn | tee -a $OUT/zero_copy_probe.txt | tail -9; done
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 300 python3 -m pytest -q tests/test_quant_kernels.py tests/test_fused_ffn.py tests/test_executor_parity.py -k "not no_memory_growth and (quant or fused or graph or triton)" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "total $((SECONDS-T0)) s"
