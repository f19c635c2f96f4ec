#!/usr/bin/env bash
# session 11 call D: the decode attention kernel (helper's, uncommitted): CUDA tests, then all-GPU Qwen3 decode
# ABAB with EDGE_MOE_DECODE_ATTN=1 (kernel) vs 0 (SDPA), and the 12 GiB row's decode once each
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 250 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_decode_attention.py tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py -k "decode_attention or decode_graphs or resident or pinned_runs or (gpu_executor and not no_memory_growth)" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
for v in 1 0 1 0; do
  env PYTHONPATH=$PP EDGE_MOE_DECODE_ATTN=$v timeout 100 python3 scratch/decode_ab.py $WORK/qwen3.gguf 24 attn$v 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/decode_ab.txt
done
for v in 1 0; do
  env PYTHONPATH=$PP EDGE_MOE_DECODE_ATTN=$v timeout 100 python3 scratch/decode_ab.py $WORK/qwen3.gguf 12 attn$v 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/decode_ab.txt
done
echo "total $((SECONDS-T0)) s"
