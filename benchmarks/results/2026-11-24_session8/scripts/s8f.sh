#!/usr/bin/env bash
# session 8 calls F and H (the same script): the hybrid rows in sequence; in H (code with the kept run figure) each later row plans with the DRAM figure the rows before it kept
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
O=/tmp/o; mkdir -p $O
T0=$SECONDS
for b in 6 12; do
  (OUT=$O/qwen3_$b DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=35 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets $b --engines llama,natural > $O/qwen3_$b.log 2>&1)
  echo "== qwen3 $b at $((SECONDS-T0)) s"; grep -E "bench: run|^decode|SKIP|fail|rror" $O/qwen3_$b.log | head -6
done
(OUT=$O/mixtral_12 DEADLINE_S=$((590-(SECONDS-T0))) EDGE_MAX_S=45 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural,replay > $O/mixtral_12.log 2>&1)
echo "== mixtral 12 at $((SECONDS-T0)) s"; grep -E "bench: run|^decode|SKIP|fail|rror" $O/mixtral_12.log | head -12
sed -n '/^| shape/,/^$/p' $O/mixtral_12/results.md
mkdir -p $OUT/r; cp $O/mixtral_12/results.md $OUT/r/results.md; cp $O/mixtral_12/results.json $OUT/r/results.json
tar czf $OUT/r/raw.tgz -C $WORK results
echo "total $((SECONDS-T0)) s"
