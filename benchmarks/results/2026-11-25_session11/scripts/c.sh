#!/usr/bin/env bash
# session 11 call C: CUDA tests (device-resident prefill, kernels, pinned, streaming), prefill ABAB old (81fe23d)
# vs new at Qwen3 24 / 12 / 6 GiB, and new with EDGE_MOE_DEVICE_RESIDENT=0 at 24 GiB
BUDGET=12 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
(cd scratch/old && ln -sfn ../converters edge_moe/converters && ln -sfn ../tui edge_moe/tui && ln -sfn ../profiles edge_moe/profiles_data)
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 280 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_host_register.py tests/test_grouped_kernels.py tests/test_executor_parity.py tests/test_pinned_layers.py -k "host_register or grouped or resident or triton_kernels or pinned or streaming" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
for b in 24 12 6; do
  for v in old new old new; do
    if [ $v = old ]; then P=$WORK/shim:$PWD/scratch/old:$WORK/site; else P=$PP; fi
    env PYTHONPATH=$P timeout 100 python3 benchmarks/results/2026-11-24_session10/scripts/prefill_ab.py (run from scratch/) $WORK/qwen3.gguf $b $v 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/prefill_ab.txt
  done
done
env PYTHONPATH=$PP EDGE_MOE_DEVICE_RESIDENT=0 timeout 100 python3 benchmarks/results/2026-11-24_session10/scripts/prefill_ab.py (run from scratch/) $WORK/qwen3.gguf 24 new-host-resident 2>&1 | grep -v -i warn | tail -1 | tee -a $OUT/prefill_ab.txt
echo "total $((SECONDS-T0)) s"
