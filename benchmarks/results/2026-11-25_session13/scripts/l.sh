#!/usr/bin/env bash
# session 13 call L: Qwen3 6 and 12 GiB rows again on another machine (call K's was slow: llama.cpp 35 tok/s at 6 GiB),
# plus edge-moe with EDGE_MOE_ZERO_COPY=0 (the planner then streams nothing: session 12's path) on the same machine
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/q DEADLINE_S=230 EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12 --engines llama,natural > $O/q.log 2>&1)
sed -n '/^| shape/,/^$/p' $O/q/results.md | cut -c1-330
cp $O/q/results.md $OUT/qwen3_rows.md; cp $O/q/results.json $OUT/qwen3_rows.json
echo "zero-copy rows done at $((SECONDS-T0)) s"
(export EDGE_MOE_ZERO_COPY=0; OUT=$O/q0 DEADLINE_S=$((540-SECONDS+T0)) EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12 --engines natural > $O/q0.log 2>&1)
grep -h -E "decode [0-9.]+ tok/s|run [0-9]" $O/q0.log | head -8; ls $O/q0
cp $O/q0/results.md $OUT/qwen3_rows_copy_mode.md 2>/dev/null; cp $O/q0/results.json $OUT/qwen3_rows_copy_mode.json 2>/dev/null
echo "total $((SECONDS-T0)) s"
