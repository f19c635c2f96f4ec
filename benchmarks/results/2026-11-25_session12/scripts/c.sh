#!/usr/bin/env bash
# session 12 call C: decode streaming with raw-address copies (SlotStore.copy_now): CUDA tests, Qwen3 6 / 12 GiB decode ABAB
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
M=$WORK/qwen3.gguf
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 150 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py tests/test_gpu_experts_stream.py tests/test_gpu_slots.py -k "decode_graphs or slots or decode_stream" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
run() { env PYTHONPATH=$PP "$@" 2>&1 | grep -v -i warn | tee -a $OUT/decode_ab.txt | grep -E "rep[12]|plan"; }
for v in 1 0 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 120 python3 scratch/decode_diag.py $M 6 ds$v; done
for v in 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 120 python3 scratch/decode_diag.py $M 12 ds${v}_12; done
echo "total $((SECONDS-T0)) s"
