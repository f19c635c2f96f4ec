#!/usr/bin/env bash
# session 14 call G: Mixtral rows at 6 and 24 GiB (never measured before) vs llama.cpp
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=$((575-SECONDS+T0)) EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 6,24 --engines llama,natural > $O/m.log 2>&1)
grep -E "SKIPPED|failed|Error|wrote" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-400
cp $O/m/results.md $OUT/mixtral_rows.md; cp $O/m/results.json $OUT/mixtral_rows.json; cp $O/m/logs.tgz $OUT/mixtral_logs.tgz
echo "total $((SECONDS-T0)) s"
