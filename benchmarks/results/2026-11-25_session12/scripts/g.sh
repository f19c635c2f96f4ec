#!/usr/bin/env bash
# session 12 call G: the bf16 grouped-kernel test failures, all-GPU prefill profiles (Qwen3 24, Mixtral 32 GiB) with the new
# grouped kernel, and the Mixtral 32 GiB row vs llama.cpp
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 60 python3 -m pytest -q -x tests/test_grouped_kernels.py -k "row_blocks" 2>&1 | tee $OUT/gpu_tests.txt | grep -E "^E |passed|failed" | head -20
env PYTHONPATH=$PP timeout 100 python3 scratch/prefill_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/prefill_prof_qwen3_24.txt | head -24
echo "qwen3 prof done at $((SECONDS-T0)) s"
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=330 EDGE_MAX_S=30 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines llama,natural > $O/m.log 2>&1)
grep -E "SKIPPED|failed" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-700
cp $O/m/results.md $OUT/mixtral32_rows.md; cp $O/m/results.json $OUT/mixtral32_rows.json
echo "total $((SECONDS-T0)) s"
