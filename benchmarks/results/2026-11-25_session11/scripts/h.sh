#!/usr/bin/env bash
# session 11 call H: the dequantized experts' gather-once path: CUDA tests, then Mixtral 32 GiB prefill ABAB
# old (HEAD, scratch/old) vs new
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
(cd scratch/old && ln -sfn ../converters edge_moe/converters && ln -sfn ../tui edge_moe/tui && ln -sfn ../profiles edge_moe/profiles_data)
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_host_register.py tests/test_gpu_experts_stream.py tests/test_executor_parity.py -k "host_register or registration or streamed_experts or (triton_kernels and (dequant or grouped)) or (triton_streaming and dequant) or resident_prefill" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
(OUT=/tmp/o/m DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines none > /tmp/msetup.log 2>&1)
echo "mixtral file at $((SECONDS-T0)) s"
for v in old new old new; do
  if [ $v = old ]; then P=$WORK/shim:$PWD/scratch/old:$WORK/site; else P=$PP; fi
  env PYTHONPATH=$P timeout 100 python3 benchmarks/results/2026-11-24_session10/scripts/prefill_ab.py (run from scratch/) $WORK/mixtral.gguf 32 $v 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/prefill_ab.txt
done
echo "total $((SECONDS-T0)) s"
