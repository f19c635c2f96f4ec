#!/usr/bin/env bash
# session 14 call A: kernel list and captured tok/s of an all-GPU Qwen3 decode token (24 GiB)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 240 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/decode_prof_qwen3_24.txt
echo "total $((SECONDS-T0)) s"
