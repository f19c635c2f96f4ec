#!/usr/bin/env bash
# session 11 call B: CUDA tests for host registration / grouped tiles / streaming, stream profile with and
# without registration, prefill ABAB old (HEAD=81fe23d, scratch/old) vs new at Qwen3 24 / 12 / 6 GiB
BUDGET=12 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
(cd scratch/old && ln -sfn ../converters edge_moe/converters && ln -sfn ../tui edge_moe/tui && ln -sfn ../profiles edge_moe/profiles_data)
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_host_register.py tests/test_gpu_experts_stream.py tests/test_grouped_kernels.py tests/test_gpu_slots.py 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
for r in 1 0; do
  env PYTHONPATH=$PP EDGE_MOE_HOST_REGISTER=$r timeout 150 python3 scratch/stream_prof.py $WORK/qwen3.gguf 12 2>&1 | grep -v -i warn | tee $OUT/stream_prof_reg$r.txt | head -40
done
echo "prof done at $((SECONDS-T0)) s"
for b in 24 12; do
  for v in old new old new; do
    if [ $v = old ]; then P=$WORK/shim:$PWD/scratch/old:$WORK/site; else P=$PP; fi
    env PYTHONPATH=$P timeout 100 python3 benchmarks/results/2026-11-24_session10/scripts/prefill_ab.py (run from scratch/) $WORK/qwen3.gguf $b $v 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/prefill_ab.txt
  done
done
echo "total $((SECONDS-T0)) s"
