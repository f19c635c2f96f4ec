#!/usr/bin/env bash
# session 10 call H (warm machine of F, G): Mixtral 12 GiB replay (shared trace) and Mixtral 32 GiB (every expert on the GPU)
T0=$SECONDS
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=585 EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines replay > $O/m2.log 2>&1)
(OUT=$O/m DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines llama,natural > $O/m3.log 2>&1)
grep -E "SKIPPED|failed" $O/m2.log $O/m3.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-420
cp $O/m/results.md $OUT/all_rows.md; cp $O/m/results.json $OUT/all_rows.json
echo "total $((SECONDS-T0)) s"
