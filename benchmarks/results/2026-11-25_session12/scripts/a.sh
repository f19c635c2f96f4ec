#!/usr/bin/env bash
# session 12 call A: where a Qwen3 6 GiB decode token's host time goes (no profiler syncs), OpenMP wait
# policy and thread variants, and llama.cpp's per-CPU-layer cost (-ncmoe 48 vs 35 vs 0) in the same call
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
M=$WORK/qwen3.gguf; ls -la $M
LB=$WORK/build-cuda/bin/llama-bench
for n in 0 35 48; do
  timeout 120 $LB -m $M -ngl 99 --n-cpu-moe $n -p 0 -n 128 -t 16 -r 2 -o md 2>&1 | grep -E "qwen|error" | tee -a $OUT/llama_ncmoe.txt
done
echo "llama done at $((SECONDS-T0)) s"
run() { env PYTHONPATH=$PP "$@" 2>&1 | grep -v -i warn | tee -a $OUT/decode_diag.txt | tail -12; }
run timeout 150 python3 scratch/decode_diag.py $M 6 default
run OMP_WAIT_POLICY=PASSIVE timeout 150 python3 scratch/decode_diag.py $M 6 passive
run OMP_WAIT_POLICY=ACTIVE timeout 150 python3 scratch/decode_diag.py $M 6 active
run THREADS=15 timeout 150 python3 scratch/decode_diag.py $M 6 threads15
run timeout 200 python3 scratch/decode_diag.py $M g0.001 allhost
echo "total $((SECONDS-T0)) s"
