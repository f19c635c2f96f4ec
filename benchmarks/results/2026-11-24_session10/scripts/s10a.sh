#!/usr/bin/env bash
# session 10 call A: llama.cpp CUDA build (fresh checkout: binaries packed back), then where a Qwen3 6 GiB
# host layer's time goes outside ggml's compute (scratch/hostgap.py)
BUDGET=6 SETUP_S=560 source benchmarks/gpu_machine/box_env.sh
cp /tmp/o/setup/llama_cuda_bin.tar.xz* $OUT/ 2>/dev/null; ls -la $OUT; grep -E "wrote|built|SKIPPED|failed" /tmp/setup.log /tmp/emb/logs/steps.log | tail
lscpu | grep -E "Model name|Socket|Core|Thread|NUMA|L3"
env PYTHONPATH=$PP timeout $((590-(SECONDS-T0))) python3 scratch/hostgap.py $WORK/qwen3.gguf 6 32 2>&1 | grep -v -i warn | tee $OUT/hostgap_6.txt
echo "total $((SECONDS-T0)) s"
