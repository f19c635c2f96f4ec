#!/usr/bin/env bash
# session 8 call C: the hybrid rows again, model files flushed to disk before measuring
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
O=/tmp/o; mkdir -p $O
T0=$SECONDS
sync; echo "sync $((SECONDS-T0)) s"; grep -E "Dirty|Writeback:" /proc/meminfo
for b in 6 12; do
  (OUT=$O/qwen3_$b DEADLINE_S=$((595-(SECONDS-T0))) EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets $b --engines llama,natural > $O/qwen3_$b.log 2>&1)
  echo "== qwen3 $b at $((SECONDS-T0)) s"; grep -E "bench: run|^decode|^prefill|SKIP|fail|rror" $O/qwen3_$b.log | head -8
done
(OUT=$O/mixtral_12 DEADLINE_S=$((595-(SECONDS-T0))) EDGE_MAX_S=60 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural > $O/mixtral_12.log 2>&1)
echo "== mixtral 12 at $((SECONDS-T0)) s"; grep -E "bench: run|^decode|^prefill|SKIP|fail|rror|wrote|flushed" $O/mixtral_12.log | head -12
for d in qwen3_6 qwen3_12 mixtral_12; do sed -n '/^| shape/,/^$/p' $O/$d/results.md 2>/dev/null | grep -E "^\| (qwen3|mixtral)"; done
mkdir -p $OUT/r; for d in qwen3_6 qwen3_12 mixtral_12; do cp $O/$d/results.md $OUT/r/$d.md 2>/dev/null; cp $O/$d/results.json $OUT/r/$d.json 2>/dev/null; done
echo "total $((SECONDS-T0)) s"
