#!/usr/bin/env bash
# session 10 call C: is the main thread slowed by ggml's spinning OpenMP workers? Python probe right after a
# ggml call vs idle, and the host-layer time outside the CPU entry under OpenMP placement / thread variants
BUDGET=6 SETUP_S=200 source benchmarks/gpu_machine/box_env.sh
run() { echo "### $1"; shift; env PYTHONPATH=$PP "$@" timeout 100 python3 scratch/hostgap2.py $WORK/qwen3.gguf 6 48 v 2>&1 | grep -v -i warn | grep -E "^==|outside|ggml compute|run front|sync|probe"; }
{
run "default (16 threads)"
run "OMP_PROC_BIND=close OMP_PLACES=cores" OMP_PROC_BIND=close OMP_PLACES=cores
run "15 threads" THREADS=15
run "GOMP_SPINCOUNT=10000" GOMP_SPINCOUNT=10000
run "default again"
run "OMP_PROC_BIND=close OMP_PLACES=cores again" OMP_PROC_BIND=close OMP_PLACES=cores
} 2>&1 | tee $OUT/variants.txt
echo "total $((SECONDS-T0)) s"
