#!/usr/bin/env bash
# session 13 call K: rows with zero-copy decode streaming planned by the cost model: Qwen3 6 and 12 GiB, Mixtral 12 GiB
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/q DEADLINE_S=250 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12 --engines llama,natural > $O/q.log 2>&1)
grep -E "SKIPPED|failed|Error|rule|stream" $O/q.log | head; sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-400
cp $O/q/results.md $OUT/qwen3_rows.md; cp $O/q/results.json $OUT/qwen3_rows.json
echo "qwen3 done at $((SECONDS-T0)) s"
(OUT=$O/m DEADLINE_S=$((560-SECONDS+T0)) EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural,replay > $O/m.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-400
cp $O/m/results.md $OUT/mixtral_rows.md; cp $O/m/results.json $OUT/mixtral_rows.json
echo "total $((SECONDS-T0)) s"
