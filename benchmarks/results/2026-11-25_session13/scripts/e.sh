#!/usr/bin/env bash
# session 13 call E: CUDA tests of the final prefill-graph code (forced ids), zero-copy probe
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
env PYTHONPATH=$PP timeout 120 python3 $S/zero_copy_probe.py 2>&1 | grep -v -i warn | tee $OUT/zero_copy_probe.txt
# (tests ran in the first call E)
echo "total $((SECONDS-T0)) s"
