#!/usr/bin/env bash
# session 8 call D: insitu.py vs the bench harness in one call; THP state
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
O=/tmp/o; mkdir -p $O; T0=$SECONDS
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag; grep -E "AnonHuge|MemFree|^Cached" /proc/meminfo
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
PP=$WORK/shim:$PWD:$WORK/site
ins() { echo "== $1 at $((SECONDS-T0)) s"; env LD_LIBRARY_PATH=$LIBDIR PYTHONPATH=$PP TAG="$1" "${@:2}" timeout 150 python3 scratch/insitu.py $WORK/qwen3.gguf 6 2>&1 | grep -E "^\[|Error|error" | grep -vE "gap (spin|sleep)" | head -20; }
ins i1
(OUT=$O/q6 DEADLINE_S=300 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6 --engines natural > $O/q6.log 2>&1)
echo "== bench at $((SECONDS-T0)) s"; grep -E "bench: run|^decode" $O/q6.log | head -5
ins i2
ins i3-lowmem EDGE_DUMMY=1
echo "total $((SECONDS-T0)) s"
