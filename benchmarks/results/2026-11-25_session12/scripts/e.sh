#!/usr/bin/env bash
# session 12 call E: Mixtral 12 GiB rows (natural and the shared trace replayed) vs llama.cpp, with decode streaming
T0=$SECONDS
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=560 EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural,replay > $O/m.log 2>&1)
grep -E "SKIPPED|failed" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-600
cp $O/m/results.md $OUT/mixtral12_rows.md; cp $O/m/results.json $OUT/mixtral12_rows.json
echo "total $((SECONDS-T0)) s"
