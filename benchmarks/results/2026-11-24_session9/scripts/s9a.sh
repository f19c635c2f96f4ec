#!/usr/bin/env bash
# session 9 call A: K-quant int8 kernels on CUDA: tests, A/B against the float kernels (HEAD~1), a rows/warps/blocks sweep
source benchmarks/gpu_machine/box_env.sh  # (the setup lines this call ran)
export PYTHONPATH=$WORK/shim:$PWD:$WORK/site
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_quant_kernels.py 2>&1 | grep -E "Error|error|passed|failed" | head -20
# echo "== before (float kernels, HEAD~1) =="
# (cd scratch/base && PYTHONPATH=$WORK/shim:$PWD:$WORK/site timeout 120 python3 -m benchmarks.quant_kernels_bench --types Q4_K,Q5_K,Q6_K --paths two 2>&1 | tail -6)
echo "== after, sweep (rows warps blocks) =="
for cfg in "1 1 32" "1 1 64" "1 2 64" "2 2 32" "1 1 16" "2 1 64"; do
  set -- $cfg
  [ $((SECONDS-T0)) -gt 480 ] && { echo "skip $cfg (time)"; continue; }
  EDGE_MOE_QROWS=$1 EDGE_MOE_QWARPS=$2 EDGE_MOE_QBLOCKS=$3 timeout 100 python3 -m benchmarks.quant_kernels_bench --types Q4_0,Q4_K,Q5_K,Q6_K --paths two 2>&1 | grep -E "GB/s|Error" | head -12
done
echo "total $((SECONDS-T0)) s"
