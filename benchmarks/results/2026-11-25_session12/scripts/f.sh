#!/usr/bin/env bash
# session 12 call F: CUDA tests of the new grouped kernel and decode streaming, Qwen3 rows 6 / 12 / 24 GiB vs llama.cpp,
# then Qwen3 6 GiB decode with a forced streaming rule vs none (recalibration)
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 150 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_grouped_kernels.py tests/test_executor_parity.py -k "grouped or resident or decode_graphs or stream" 2>&1 | tee $OUT/gpu_tests.txt | tail -3
echo "tests done at $((SECONDS-T0)) s"
O=/tmp/o; mkdir -p $O
(OUT=$O/q DEADLINE_S=300 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12,24 --engines llama,natural > $O/q.log 2>&1)
grep -E "SKIPPED|failed" $O/q.log | head; sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-700
cp $O/q/results.md $OUT/qwen3_rows.md; cp $O/q/results.json $OUT/qwen3_rows.json
echo "rows done at $((SECONDS-T0)) s"
run() { env PYTHONPATH=$PP "$@" 2>&1 | grep -v -i warn | tee -a $OUT/decode_ab.txt | grep -E "rep[12]|plan"; }
run REPS=2 DECODE_STREAM_RULE=0,0,1,1,2,2,3,3,4 timeout 60 python3 scratch/decode_diag.py $WORK/qwen3.gguf 6 forced4
run REPS=2 EDGE_MOE_DECODE_STREAM=0 timeout 60 python3 scratch/decode_diag.py $WORK/qwen3.gguf 6 off
echo "total $((SECONDS-T0)) s"
