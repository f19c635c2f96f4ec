#!/usr/bin/env bash
# session 13 call B: prefill graphs on CUDA: parity tests (captured), then eager vs graphs A/B on Qwen3 24 and Mixtral 32 GiB
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
S=benchmarks/results/2026-11-25_session13/scripts
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 240 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py -k "prefill_graph or token_buckets or resident" 2>&1 | tee $OUT/gpu_tests.txt | tail -4
echo "tests done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 150 python3 $S/prefill_graph_ab.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/ab_qwen3_24.txt
echo "qwen3 done at $((SECONDS-T0)) s"
(OUT=/tmp/o/mx DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines none > /tmp/mx.log 2>&1)
env PYTHONPATH=$PP timeout 170 python3 $S/prefill_graph_ab.py $WORK/mixtral.gguf 32 2>&1 | grep -v -i warn | tee $OUT/ab_mixtral_32.txt
echo "total $((SECONDS-T0)) s"
