#!/usr/bin/env bash
# session 11 call E: Qwen3 rows at 6, 12 and 24 GiB vs llama.cpp on the final code
T0=$SECONDS
O=/tmp/o; mkdir -p $O
(OUT=$O/q DEADLINE_S=585 EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12,24 --engines llama,natural > $O/q.log 2>&1)
grep -E "SKIPPED|failed" $O/q.log | head; sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-420
cp $O/q/results.md $OUT/qwen3_rows.md; cp $O/q/results.json $OUT/qwen3_rows.json; cp $O/q/logs.tgz $OUT/qwen3_logs.tgz 2>/dev/null
echo "total $((SECONDS-T0)) s"
