#!/usr/bin/env bash
# session 14 call J: Qwen3 6 and 12 GiB rows again on another machine (call F's llama.cpp ran its CPU layers slowly)
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/q DEADLINE_S=$((560-SECONDS+T0)) EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12 --engines llama,natural > $O/q.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/q.log | head; sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-400
cp $O/q/results.md $OUT/qwen3_rows.md; cp $O/q/results.json $OUT/qwen3_rows.json; cp $O/q/logs.tgz $OUT/qwen3_logs.tgz
echo "total $((SECONDS-T0)) s"
