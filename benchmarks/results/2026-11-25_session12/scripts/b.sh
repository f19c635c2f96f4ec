#!/usr/bin/env bash
# session 12 call B: decode streaming (misses copied to the ring beside the CPU's share): CUDA tests, Qwen3 6 / 12 GiB
# decode A/B (EDGE_MOE_DECODE_STREAM=1 vs 0), then the helper's grouped prefill kernel sweep
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
M=$WORK/qwen3.gguf
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py tests/test_gpu_experts_stream.py tests/test_gpu_slots.py -k "decode_graphs or stream or slots" 2>&1 | tee $OUT/gpu_tests.txt | tail -4
echo "tests done at $((SECONDS-T0)) s"
run() { env PYTHONPATH=$PP "$@" 2>&1 | grep -v -i warn | tee -a $OUT/decode_ab.txt | grep -E "rep[12]|plan|stream"; }
for v in 1 0 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 120 python3 scratch/decode_diag.py $M 6 ds$v; done
for v in 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 120 python3 scratch/decode_diag.py $M 12 ds${v}_12; done
echo "decode done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 240 python3 scratch/grouped_v2_bench.py qwen3 mixtral 2>&1 | grep -v -i warn | tee $OUT/grouped_v2.txt | tail -40
echo "total $((SECONDS-T0)) s"
