#!/usr/bin/env bash
# session 11 call F: Mixtral 12 GiB natural and replay, and 32 GiB (every expert on the GPU) vs llama.cpp
T0=$SECONDS
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=585 EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12,32 --engines llama,natural > $O/m.log 2>&1)
grep -E "SKIPPED|failed" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-420
cp $O/m/results.md $OUT/mixtral_rows.md; cp $O/m/results.json $OUT/mixtral_rows.json; cp $O/m/logs.tgz $OUT/mixtral_logs.tgz 2>/dev/null
echo "total $((SECONDS-T0)) s"
