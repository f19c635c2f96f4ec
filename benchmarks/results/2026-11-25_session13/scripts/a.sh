#!/usr/bin/env bash
# session 13 call A: grouped-kernel tile sweep (Qwen3, Mixtral shapes), all-GPU prefill profiles (Qwen3 24, Mixtral 32)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
env PYTHONPATH=$PP timeout 200 python3 $S/grouped_sweep.py qwen3 mixtral 2>&1 | grep -v -i warn | tee $OUT/grouped_sweep.txt
echo "sweep done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 100 python3 $S/prefill_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/prefill_prof_qwen3_24.txt | head -30
echo "qwen3 prof done at $((SECONDS-T0)) s"
(OUT=/tmp/o/mx DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines none > /tmp/mx.log 2>&1)
ls -la $WORK/*.gguf
env PYTHONPATH=$PP timeout 150 python3 $S/prefill_prof.py $WORK/mixtral.gguf 32 2>&1 | grep -v -i warn | tee $OUT/prefill_prof_mixtral_32.txt | head -40
echo "total $((SECONDS-T0)) s"
