#!/usr/bin/env bash
# session 10 call I: resident layers' lookups as a table read (no pins): CUDA tests, then prefill ABAB
# previous commit (2969278, scratch/old) vs new at Qwen3 24 GiB (every expert cached) and 12 GiB (31 pinned layers)
BUDGET=24 SETUP_S=200 source benchmarks/gpu_machine/box_env.sh
(cd scratch/old && ln -sfn ../converters edge_moe/converters && ln -sfn ../tui edge_moe/tui && ln -sfn ../profiles edge_moe/profiles_data)
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 240 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_gpu_experts_stream.py -k "decode_graphs or resident or quantized_dense or pinned or (gpu_executor and not no_memory_growth) or triton" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
for b in 24 12; do
  for v in old new old new; do
    if [ $v = old ]; then P=$WORK/shim:$PWD/scratch/old:$WORK/site; else P=$PP; fi
    env PYTHONPATH=$P timeout 120 python3 scratch/prefill_ab.py $WORK/qwen3.gguf $b $v 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/prefill_ab.txt
  done
done
echo "total $((SECONDS-T0)) s"
