#!/usr/bin/env bash
# session 10 call J (measurement only, for the next session): the kernels of an all-GPU Qwen3 decode token
# (24 GiB: one graph a token) and of a Qwen3 6 GiB token, torch.profiler kernel tables
# (scratch/outside.py is session 9's benchmarks/results/2026-11-24_session9/scripts/outside.py, unchanged)
BUDGET=24 SETUP_S=200 source benchmarks/gpu_machine/box_env.sh
for b in 24 6; do
  env PYTHONPATH=$PP timeout 200 python3 scratch/outside.py $WORK/qwen3.gguf $b 2>&1 | grep -v -i warn | head -140 > $OUT/kernels_$b.txt; head -10 $OUT/kernels_$b.txt
done
echo "total $((SECONDS-T0)) s"
