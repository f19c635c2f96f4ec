#!/usr/bin/env bash
# session 11 call A: grouped kernel sweep (old vs new configs), then where a streamed Qwen3 12 GiB prefill layer goes
BUDGET=12 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee $OUT/gpu.txt
env PYTHONPATH=$PP timeout 300 python3 scratch/grouped_bench.py 2>&1 | grep -v -i warn | tee $OUT/grouped_bench.txt
echo "grouped done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 200 python3 scratch/stream_prof.py $WORK/qwen3.gguf 12 --profile 2>&1 | grep -v -i warn | tee $OUT/stream_prof.txt | head -60
echo "total $((SECONDS-T0)) s"
