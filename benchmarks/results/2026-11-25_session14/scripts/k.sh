#!/usr/bin/env bash
# session 14 call K: h quantized by the norm launches (EDGE_MOE_NORM_QUANT): CUDA tests; decode A/B in one setup
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_norm_kernels.py \
  tests/test_route_kernels.py tests/test_quant_kernels.py tests/test_executor_parity.py \
  -k "not no_memory_growth and (norm or route or quant or graph or resident or streaming or triton)" 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
echo "tests done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 60 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | grep -v "  seq" > $OUT/decode_prof_k.txt; head -12 $OUT/decode_prof_k.txt
for i in 1 2; do
  for v in 0 1; do
    echo "NORM_QUANT=$v: $(env PYTHONPATH=$PP MODES=on EDGE_MOE_NORM_QUANT=$v timeout 60 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep 'tok/s')"
  done
done | tee $OUT/ab_norm_quant.txt
echo "total $((SECONDS-T0)) s"
