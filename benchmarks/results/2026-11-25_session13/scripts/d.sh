#!/usr/bin/env bash
# session 13 call D: Mixtral rows vs llama.cpp: 32 GiB (all GPU, prefill graphs), 12 GiB natural and replay; Qwen3 24 again (bench warm-up twice)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=420 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32,12 --engines llama,natural,replay > $O/m.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-400
cp $O/m/results.md $OUT/mixtral_rows.md; cp $O/m/results.json $OUT/mixtral_rows.json
echo "mixtral done at $((SECONDS-T0)) s"
(OUT=$O/q DEADLINE_S=130 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines llama,natural > $O/q.log 2>&1)
grep -E "SKIPPED|failed|Error" $O/q.log | head; sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-400
cp $O/q/results.md $OUT/qwen3_24_rows.md; cp $O/q/results.json $OUT/qwen3_24_rows.json
echo "total $((SECONDS-T0)) s"
