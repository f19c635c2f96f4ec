#!/usr/bin/env bash
# session 14 call L: Qwen3 24 GiB row on the final code (h quantized by the norms)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/q24 DEADLINE_S=$((400-SECONDS+T0)) EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines llama,natural > $O/q24.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/q24.log | head; sed -n '/^| shape/,/^$/p' $O/q24/results.md | cut -c1-400
cp $O/q24/results.md $OUT/qwen3_24_row.md; cp $O/q24/results.json $OUT/qwen3_24_row.json
echo "total $((SECONDS-T0)) s"
