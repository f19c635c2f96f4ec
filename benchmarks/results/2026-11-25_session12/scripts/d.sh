#!/usr/bin/env bash
# session 12 call D: decode streaming with batched copies (cudaMemcpyBatchAsync): CUDA tests, Qwen3 6 / 12 GiB
# decode ABAB, then Mixtral 12 GiB A/B
BUDGET=6 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
M=$WORK/qwen3.gguf
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 120 python3 -m pytest -q -o faulthandler_timeout=60 tests/test_executor_parity.py tests/test_gpu_slots.py -k "(decode_graphs and (stream or LRU)) or slots" 2>&1 | tee $OUT/gpu_tests.txt | tail -2
env PYTHONPATH=$PP python3 -c "
import torch; torch.zeros(1,device='cuda')
from edge_moe.cuda_memcpy import load; c=load(); print('runtime', c.version, 'batch', c._batch is not None)"
echo "tests done at $((SECONDS-T0)) s"
run() { env PYTHONPATH=$PP "$@" 2>&1 | grep -v -i warn | tee -a $OUT/decode_ab.txt | grep -E "rep[12]|plan"; }
for v in 1 0 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 100 python3 scratch/decode_diag.py $M 6 ds$v; done
for v in 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 100 python3 scratch/decode_diag.py $M 12 ds${v}_12; done
echo "qwen3 done at $((SECONDS-T0)) s"
(OUT=/tmp/o/m DEADLINE_S=200 bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape mixtral --budgets 12 --engines none > /tmp/msetup.log 2>&1); ls -la $WORK/*.gguf
for v in 1 0; do run EDGE_MOE_DECODE_STREAM=$v timeout 120 python3 scratch/decode_diag.py $WORK/mixtral.gguf 12 mix_ds${v}_12; done
echo "total $((SECONDS-T0)) s"
