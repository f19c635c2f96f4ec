#!/usr/bin/env bash
# session 14 call B: kernel sequence of an all-GPU Qwen3 decode token; int8 matvec tile sweep (captured tok/s)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 100 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/decode_seq_qwen3_24.txt | grep -v "/layer"
for cfg in 1,1,32 1,1,16 2,1,32 1,2,32 2,2,32 4,4,32 1,4,64 1,1,32; do
  IFS=, read r w b <<< "$cfg"
  echo "== rows $r warps $w blocks $b"
  env PYTHONPATH=$PP MODES=on EDGE_MOE_QROWS=$r EDGE_MOE_QWARPS=$w EDGE_MOE_QBLOCKS=$b timeout 60 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep "tok/s"
done
echo "total $((SECONDS-T0)) s"
