#!/usr/bin/env bash
# session 8 call G: torch's intra-op threads vs ggml's in situ (Qwen3 6 GiB, ABAB)
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
T0=$SECONDS
[ -f $WORK/qwen3.gguf ] || (OUT=/tmp/o/setup DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines none > /tmp/setup_qwen3.log 2>&1); echo "setup $((SECONDS-T0)) s"
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
export LD_LIBRARY_PATH=$LIBDIR
PP=$WORK/shim:$PWD:$WORK/site
TL=$(python3 -c "import torch, os; print(os.path.dirname(torch.__file__) + '/lib')")
ls $TL | grep -i omp; ldd $TL/libtorch_cpu.so | grep -iE "omp|gomp"
ins() { echo "== $1 at $((SECONDS-T0)) s"; env PYTHONPATH=$PP TAG="$1" "${@:2}" timeout 150 python3 scratch/insitu.py $WORK/qwen3.gguf 6 2>&1 | grep -E "^\[|Error|error" | grep -vE "gap (spin|sleep)|memory" | head -20; }
ins torch1 TORCH_THREADS=1
ins torch16
ins torch1 TORCH_THREADS=1
ins torch16
echo "total $((SECONDS-T0)) s"
