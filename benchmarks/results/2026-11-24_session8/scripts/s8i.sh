#!/usr/bin/env bash
# session 8 call I: the final code's CUDA path of the kept run figure (bench_stats.record_run_figure), twice in a row
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
T0=$SECONDS
(OUT=/tmp/o/setup DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines none > /tmp/setup.log 2>&1); echo "setup $((SECONDS-T0)) s"
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
export LD_LIBRARY_PATH=$LIBDIR PYTHONPATH=$WORK/shim:$PWD:$WORK/site
for i in 1 2; do
  timeout 200 python3 -m edge_moe.cli bench -m $WORK/qwen3.gguf --vram-budget 12 -t 16 -r 2 -p 256 -n 64 -o /tmp/b$i.json > /tmp/b$i.log 2>&1; echo "rc $?"
  python3 -c "
import json; d=json.load(open('/tmp/b$i.json')); c=d['cpu_in_situ']
print('run $i: decode', round(d['summary']['decode_tps']['mean'],2), 'pred', round(d['plan']['predicted_decode_tps'],2), 'cpu', round(c['gbps']['mean'],1), '/', round(c['planned_gbps']['mean'],1), 'figure', c['dram_gbps'], 'recorded', d['recorded_dram_gbps'])
print([n for n in d['plan']['notes'] if 'DRAM' in n])"
done
echo "total $((SECONDS-T0)) s"
