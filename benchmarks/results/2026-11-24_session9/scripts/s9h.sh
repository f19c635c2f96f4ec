#!/usr/bin/env bash
# session 9 call H: Mixtral 12 GiB natural and replay against llama.cpp on the final code
source benchmarks/gpu_machine/box_env.sh
O=/tmp/o; mkdir -p $O
(OUT=$O/mixtral_12 DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=45 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural,replay > $O/mixtral_12.log 2>&1)
echo "== mixtral 12 at $((SECONDS-T0)) s"; grep -E "bench: run|^decode|SKIP|fail|rror" $O/mixtral_12.log | head -12
sed -n '/^| shape/,/^$/p' $O/mixtral_12/results.md
mkdir -p $OUT/mixtral_12; cp $O/mixtral_12/results.* $OUT/mixtral_12/ 2>/dev/null
echo "total $((SECONDS-T0)) s"
