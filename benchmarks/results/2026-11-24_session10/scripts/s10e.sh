#!/usr/bin/env bash
# session 10 call E: fused residual add + RMSNorm in the decode fronts (norm_kernels.py): CUDA tests, then ABAB
# EDGE_MOE_FUSED_NORM=0 (torch) vs 1 on Qwen3 6 GiB (host layers) and 24 GiB (every expert on the GPU)
BUDGET=6 SETUP_S=200 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 240 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_norm_kernels.py tests/test_route_kernels.py tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_cpu_experts.py tests/test_run_figure.py -k "norm or route or decode_graphs or resident or quantized_dense or pinned or (gpu_executor and not no_memory_growth) or forward_token or (test_run_figure and not run_records and not run_on_the_cpu)" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
for b in 6 24; do
  for f in 0 1 0 1; do
    [ $b = 24 ] && [ $((SECONDS-T0)) -gt 480 ] && break
    env PYTHONPATH=$PP PYSPEED=0 EDGE_MOE_FUSED_NORM=$f timeout 100 python3 scratch/hostgap2.py $WORK/qwen3.gguf $b 48 "budget $b fused_norm=$f" 2>&1 | grep -v -i warn | tee -a $OUT/fused_norm_ab.txt | grep -E "^==|outside|sync"
  done
done
echo "total $((SECONDS-T0)) s"
