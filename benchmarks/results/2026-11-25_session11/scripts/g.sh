#!/usr/bin/env bash
# session 11 call G: where an all-GPU prefill's time goes (Qwen3 24 GiB, Mixtral 32 GiB), and the GPU tests of
# the registration / unregister-after-preload change
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 150 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_host_register.py tests/test_gpu_experts_stream.py 2>&1 | tee $OUT/gpu_tests.txt | tail -3
env PYTHONPATH=$PP timeout 150 python3 scratch/prefill_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | tee $OUT/prefill_prof_qwen3_24.txt | head -30
(OUT=/tmp/o/m DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 32 --engines none > /tmp/msetup.log 2>&1); ls -la $WORK/*.gguf
env PYTHONPATH=$PP timeout 200 python3 scratch/prefill_prof.py $WORK/mixtral.gguf 32 2>&1 | grep -v -i warn | tee $OUT/prefill_prof_mixtral_32.txt | head -30
echo "total $((SECONDS-T0)) s"
