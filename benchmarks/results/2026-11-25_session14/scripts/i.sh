#!/usr/bin/env bash
# session 14 call I: Mixtral 12 GiB natural and replay rows on the final code; issue 5's kernel table (two-launch path)
BUDGET=12 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 170 python3 -m benchmarks.quant_kernels_bench --paths two --json $OUT/quant_kernels_bench.json 2>&1 | grep -v -i warn | tee $OUT/quant_kernels_bench.txt
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=$((575-SECONDS+T0)) EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,natural,replay > $O/m.log 2>&1)
grep -E "SKIPPED|failed|Error|wrote" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-400
cp $O/m/results.md $OUT/mixtral12_rows.md; cp $O/m/results.json $OUT/mixtral12_rows.json; cp $O/m/logs.tgz $OUT/mixtral12_logs.tgz
echo "total $((SECONDS-T0)) s"
