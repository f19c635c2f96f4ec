#!/usr/bin/env bash
# session 9 call E: where a Qwen3 decode token's time goes outside the CPU expert calls (6 and 12 GiB)
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
for b in 6 12; do
  env PYTHONPATH=$PP timeout 200 python3 scratch/outside.py $WORK/qwen3.gguf $b 2>&1 | grep -v Warning | head -60 | tee $OUT/outside_$b.txt
done
echo "total $((SECONDS-T0)) s"
