#!/usr/bin/env bash
# session 9 call G: the CUDA test sequence on the final code (prologue graph, cost model), then the
# Qwen3 rows against llama.cpp
source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 300 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_fused_ffn.py tests/test_quant_kernels.py tests/test_grouped_kernels.py tests/test_route_kernels.py tests/test_gpu_slots.py tests/test_gpu_experts_stream.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_executor_parity.py tests/test_bench.py tests/test_run_figure.py -k "fused or quant or grouped or (not no_memory_growth and (route or gpu_slots or stream or pinned or repack or gpu_executor or decode_graphs or resident or triton or cuda or fill)) or test_bench or (test_run_figure and not run_records and not run_on_the_cpu)" 2>&1 | tee $OUT/gpu_tests_final.txt | tail -4
echo "tests at $((SECONDS-T0)) s"
O=/tmp/o; mkdir -p $O
for b in 6 12; do
  [ $((SECONDS-T0)) -gt 420 ] && { echo "skip qwen3 $b (time)"; continue; }
  (OUT=$O/qwen3_$b DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets $b --engines llama,natural > $O/qwen3_$b.log 2>&1)
  echo "== qwen3 $b at $((SECONDS-T0)) s"; sed -n '/^| shape/,/^$/p' $O/qwen3_$b/results.md | tail -2
  mkdir -p $OUT/qwen3_$b; cp $O/qwen3_$b/results.* $OUT/qwen3_$b/ 2>/dev/null
done
echo "total $((SECONDS-T0)) s"
