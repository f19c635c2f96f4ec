#!/usr/bin/env bash
# session 8 call E: 2 MiB pages for ggml's expert reads (microbench), then Qwen3 6 GiB in situ ABAB
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
T0=$SECONDS
[ -f $WORK/qwen3.gguf ] || (OUT=/tmp/o/setup DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines none > /tmp/setup_qwen3.log 2>&1); echo "setup $((SECONDS-T0)) s"
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
export LD_LIBRARY_PATH=$LIBDIR
PP=$WORK/shim:$PWD:$WORK/site
env PYTHONPATH=$PP timeout 200 python3 scratch/thp.py 16 2>&1 | tail -20
ins() { echo "== $1 at $((SECONDS-T0)) s"; env PYTHONPATH=$PP TAG="$1" "${@:2}" timeout 150 python3 scratch/insitu.py $WORK/qwen3.gguf 6 2>&1 | grep -E "^\[|Error|error" | grep -vE "gap (spin|sleep)" | head -20; }
ins thp EDGE_MOE_HUGE_PAGES=1
ins 4k EDGE_MOE_HUGE_PAGES=0
ins thp EDGE_MOE_HUGE_PAGES=1
ins 4k EDGE_MOE_HUGE_PAGES=0
echo "total $((SECONDS-T0)) s"
