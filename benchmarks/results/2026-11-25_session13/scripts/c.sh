#!/usr/bin/env bash
# session 13 call C: GPU tests (graphs, resident, grouped, GPU executor, streaming), eager/eager/graphs on Qwen3 24, Qwen3 rows vs llama.cpp
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py tests/test_gpu_executor.py tests/test_gpu_experts_stream.py -k "(graph or resident or grouped or gpu_executor or stream or cuda) and not no_memory_growth" 2>&1 | tee $OUT/gpu_tests.txt | tail -4
echo "tests done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 120 python3 $S/prefill_graph_ab.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/ab_qwen3_24.txt | head -8
echo "ab done at $((SECONDS-T0)) s"
O=/tmp/o; mkdir -p $O
(OUT=$O/q DEADLINE_S=330 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24,12,6 --engines llama,natural > $O/q.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/q.log | head; sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-400
cp $O/q/results.md $OUT/qwen3_rows.md; cp $O/q/results.json $OUT/qwen3_rows.json
echo "total $((SECONDS-T0)) s"
