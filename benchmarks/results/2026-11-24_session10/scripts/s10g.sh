#!/usr/bin/env bash
# session 10 call G (warm machine of call F): Qwen3 6 GiB again (F's first row ran cold: incomplete, prefill 0.52),
# then Mixtral 12 GiB natural vs llama.cpp on the final code
T0=$SECONDS
O=/tmp/o; mkdir -p $O
(OUT=$O/q6 DEADLINE_S=200 EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6 --engines llama,natural > $O/q6.log 2>&1)
sed -n '/^| shape/,/^$/p' $O/q6/results.md | cut -c1-420; cp $O/q6/results.md $OUT/qwen3_6_again.md; cp $O/q6/results.json $OUT/qwen3_6_again.json
(OUT=$O/m DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural > $O/m.log 2>&1)
grep -E "SKIPPED|failed|wrote" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-420
cp $O/m/results.md $OUT/mixtral_rows.md; cp $O/m/results.json $OUT/mixtral_rows.json
echo "total $((SECONDS-T0)) s"
