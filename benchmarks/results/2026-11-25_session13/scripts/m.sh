#!/usr/bin/env bash
# session 13 call M: Mixtral 32 GiB replay row again, now that forced ids run through the prefill graphs
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=$((560-SECONDS+T0)) EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines llama,replay > $O/m.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-400
cp $O/m/results.md $OUT/mixtral32_replay.md; cp $O/m/results.json $OUT/mixtral32_replay.json
echo "total $((SECONDS-T0)) s"
