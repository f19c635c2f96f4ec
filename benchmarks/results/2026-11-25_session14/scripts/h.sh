#!/usr/bin/env bash
# session 14 call H: CUDA route / resident decode graph tests after route_pairs' warps rule; Mixtral 6 GiB again
# with room for 3 whole runs (call G's third run stopped at --max-seconds) and Mixtral 32 GiB (all GPU)
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_route_kernels.py \
  tests/test_executor_parity.py -k "route or resident_decode or decode_graphs" 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=$((570-SECONDS+T0)) EDGE_MAX_S=75 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 6,32 --engines llama,natural > $O/m.log 2>&1)
grep -E "SKIPPED|failed|Error|wrote" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-400
cp $O/m/results.md $OUT/mixtral_rows.md; cp $O/m/results.json $OUT/mixtral_rows.json; cp $O/m/logs.tgz $OUT/mixtral_logs.tgz
echo "total $((SECONDS-T0)) s"
