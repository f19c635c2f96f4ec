#!/usr/bin/env bash
# session 9 call F: the prologue graph on CUDA: decode-graph tests, the outside-the-layers time again (6 and 12 GiB)
# with a kernel profile, then Qwen3 6 GiB vs llama.cpp
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_run_figure.py -k "decode_graphs or resident or quantized_dense or pinned or gpu_executor or (test_run_figure and not run_records and not run_on_the_cpu)" 2>&1 | tee $OUT/gpu_tests_prologue.txt | tail -4
for b in 6 12; do
  env PYTHONPATH=$PP timeout 150 python3 scratch/outside.py $WORK/qwen3.gguf $b 2>&1 | grep -v Warning | head -140 > $OUT/outside_$b.txt; head -12 $OUT/outside_$b.txt
done
echo "at $((SECONDS-T0)) s"
O=/tmp/o; mkdir -p $O
(OUT=$O/qwen3_6 DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6 --engines llama,natural > $O/qwen3_6.log 2>&1)
sed -n '/^| shape/,/^$/p' $O/qwen3_6/results.md; mkdir -p $OUT/qwen3_6; cp $O/qwen3_6/results.* $OUT/qwen3_6/ 2>/dev/null
echo "total $((SECONDS-T0)) s"
