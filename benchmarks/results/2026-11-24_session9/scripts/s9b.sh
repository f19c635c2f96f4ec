#!/usr/bin/env bash
# session 9 call B: the CUDA test sequence on the final code (split modules, decode_cpu counters, K-quant int8
# kernels) and the kernel bandwidth table at the defaults
source benchmarks/gpu_machine/box_env.sh  # (the setup lines this call ran)
nvidia-smi --query-gpu=name --format=csv,noheader
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 380 python3 -m pytest -q -o faulthandler_timeout=40 tests/test_fused_ffn.py tests/test_quant_kernels.py tests/test_grouped_kernels.py tests/test_route_kernels.py tests/test_gpu_slots.py tests/test_gpu_experts_stream.py tests/test_pinned_layers.py tests/test_gpu_executor.py tests/test_executor_parity.py tests/test_bench.py tests/test_run_figure.py -k "fused or quant or grouped or (not no_memory_growth and (route or gpu_slots or stream or pinned or repack or gpu_executor or decode_graphs or resident or triton or cuda or fill)) or test_bench or test_run_figure" 2>&1 | tee $OUT/gpu_tests.txt | tail -8
echo "tests done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 150 python3 -m benchmarks.quant_kernels_bench --paths two --json $OUT/quant_kernels_bench.json 2>&1 | tee $OUT/quant_kernels_bench.txt | grep GB/s
echo "total $((SECONDS-T0)) s"
