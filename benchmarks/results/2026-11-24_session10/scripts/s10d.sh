#!/usr/bin/env bash
# session 10 call D: lean host-layer bookkeeping (+ quant_kernels split, chat threads): CUDA tests; ABAB
# previous commit (2241b8f, scratch/old) vs new on Qwen3 6 GiB (scratch/hostgap2.py); the 6 GiB row vs llama.cpp
BUDGET=6 SETUP_S=200 source benchmarks/gpu_machine/box_env.sh
(cd scratch/old && ln -sfn ../converters edge_moe/converters && ln -sfn ../tui edge_moe/tui && ln -sfn ../profiles edge_moe/profiles_data)
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 240 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_quant_kernels.py tests/test_route_kernels.py tests/test_executor_parity.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_cpu_experts.py tests/test_run_figure.py -k "test_quant_kernels or route or decode_graphs or resident or quantized_dense or pinned or (gpu_executor and not no_memory_growth) or forward_token or (test_run_figure and not run_records and not run_on_the_cpu)" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
for v in old new old new; do
  if [ $v = old ]; then P=$WORK/shim:$PWD/scratch/old:$WORK/site; else P=$PP; fi
  env PYTHONPATH=$P PYSPEED=0 timeout 100 python3 scratch/hostgap2.py $WORK/qwen3.gguf 6 48 $v 2>&1 | grep -v -i warn | tee -a $OUT/hostgap2_ab.txt | grep "^=="
done
echo "ab done at $((SECONDS-T0)) s"
O=/tmp/o; mkdir -p $O
(OUT=$O/q6 DEADLINE_S=$((585-(SECONDS-T0))) EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6 --engines llama,natural > $O/q6.log 2>&1)
sed -n '/^| shape/,/^$/p' $O/q6/results.md | cut -c1-400; cp $O/q6/results.md $OUT/q6_results.md; cp $O/q6/results.json $OUT/q6_results.json 2>/dev/null
echo "total $((SECONDS-T0)) s"
