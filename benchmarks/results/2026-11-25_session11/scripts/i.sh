#!/usr/bin/env bash
# session 11 call I: the shared all-cached parity helper on CUDA, then the Mixtral 12 GiB replay row (shared trace)
T0=$SECONDS
O=/tmp/o; mkdir -p $O
(OUT=$O/m DEADLINE_S=480 EDGE_MAX_S=40 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines llama,replay > $O/m.log 2>&1)
grep -E "SKIPPED|failed" $O/m.log | head; sed -n '/^| shape/,/^$/p' $O/m/results.md | cut -c1-420
cp $O/m/results.md $OUT/mixtral_replay.md; cp $O/m/results.json $OUT/mixtral_replay.json
WORK=/tmp/emb; LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
env LD_LIBRARY_PATH=$LIBDIR PYTHONPATH=$WORK/shim:$PWD:$WORK/site EDGE_MOE_REFERENCE=cpu timeout 100 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py -k "resident_prefill or resident_decode" 2>&1 | tee $OUT/gpu_tests.txt | tail -2
echo "total $((SECONDS-T0)) s"
