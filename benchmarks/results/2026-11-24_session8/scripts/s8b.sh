#!/usr/bin/env bash
# session 8 call B: thread count x binding x wait policy, Qwen3 6 and 12 GiB
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
O=/tmp/o; mkdir -p $O; T0=$SECONDS
[ -f $WORK/qwen3.gguf ] || (OUT=$O/setup DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines none > $O/setup_qwen3.log 2>&1)
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
export LD_LIBRARY_PATH=$LIBDIR
PP=$WORK/shim:$PWD:$WORK/site
B=${B:-6}
run() { echo "== $1 at $((SECONDS-T0)) s"; env PYTHONPATH=$PP TAG="$1" "${@:2}" timeout 150 python3 scratch/insitu.py $WORK/qwen3.gguf $B 2>&1 | grep -E "^\[|Error|error" | grep -v "gap (spin|sleep)" | head -20; }
run t16bind OMP_PROC_BIND=close OMP_PLACES=cores
run t15bind THREADS=15 OMP_PROC_BIND=close OMP_PLACES=cores
run t15 THREADS=15
run t15active THREADS=15 OMP_WAIT_POLICY=ACTIVE
run t14bind THREADS=14 OMP_PROC_BIND=close OMP_PLACES=cores
run t16base
B=12
run q12-t16base
run q12-t15 THREADS=15
run q12-t15bind THREADS=15 OMP_PROC_BIND=close OMP_PLACES=cores
run q12-t16bind OMP_PROC_BIND=close OMP_PLACES=cores
echo "total $((SECONDS-T0)) s"
