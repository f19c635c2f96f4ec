#!/usr/bin/env bash
# session 14 call C: int8 matvec tile sweep per launch (Qwen3 / Mixtral experts, dense qkv / o), graph-timed
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 250 python3 scratch/tile_sweep.py qwen3,dense Q4_0 2>&1 | grep -v -i warn | tee $OUT/tile_sweep_q4_0.txt | grep BEST
env PYTHONPATH=$PP timeout 150 python3 scratch/tile_sweep.py mixtral Q4_0 2>&1 | grep -v -i warn | tee $OUT/tile_sweep_mixtral_q4_0.txt | grep BEST
env PYTHONPATH=$PP timeout 150 python3 scratch/tile_sweep.py qwen3 Q8_0,Q4_K,Q6_K 2>&1 | grep -v -i warn | tee $OUT/tile_sweep_qwen3_other.txt | grep BEST
echo "total $((SECONDS-T0)) s"
