#!/usr/bin/env bash
# session 8 call A: in-situ CPU expert calls vs replayed back to back, Qwen3 6 GiB, OpenMP variants
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
O=/tmp/o; mkdir -p $O; T0=$SECONDS
(OUT=$O/setup DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 24 --engines none > $O/setup_qwen3.log 2>&1)
echo "setup $((SECONDS-T0)) s"; nproc; lscpu | grep -E "Model name|Thread|Core|Socket|NUMA node|L3"
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
export LD_LIBRARY_PATH=$LIBDIR
ldd $LIBDIR/libggml-cpu.so | grep -i omp
PP=$WORK/shim:$PWD:$WORK/site
run() { echo "== $1 at $((SECONDS-T0)) s"; env PYTHONPATH=$PP TAG="$1" "${@:2}" timeout 150 python3 scratch/insitu.py $WORK/qwen3.gguf 6 2>&1 | grep -E "^\[|Error|error" | head -20; }
run base
run active OMP_WAIT_POLICY=ACTIVE
run passive OMP_WAIT_POLICY=PASSIVE
run t15 THREADS=15
run bind OMP_PROC_BIND=close OMP_PLACES=cores
echo "total $((SECONDS-T0)) s"
