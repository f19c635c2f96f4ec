#!/usr/bin/env bash
# session 9 call C: decode counters on CUDA (captured graphs), then the Qwen3 12 GiB row against llama.cpp on the final code
source benchmarks/gpu_machine/box_env.sh  # (the setup lines this call ran)
O=/tmp/o; mkdir -p $O
env LD_LIBRARY_PATH=$LIBDIR PYTHONPATH=$PP timeout 120 python3 -m pytest -q tests/test_run_figure.py -k "not run_records and not run_on_the_cpu" 2>&1 | tee $OUT/run_figure_tests.txt | tail -3
for b in 12; do
  (OUT=$O/qwen3_$b DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets $b --engines llama,natural > $O/qwen3_$b.log 2>&1)
  echo "== qwen3 $b at $((SECONDS-T0)) s"; grep -E "bench: run|^decode|SKIP|fail|rror" $O/qwen3_$b.log | head -6
  sed -n '/^| shape/,/^$/p' $O/qwen3_$b/results.md
  mkdir -p $OUT/qwen3_$b; cp $O/qwen3_$b/results.md $O/qwen3_$b/results.json $OUT/qwen3_$b/ 2>/dev/null
done
echo "total $((SECONDS-T0)) s"
