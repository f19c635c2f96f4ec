#!/usr/bin/env bash
# session 14 call D: CUDA tests of the changed kernels and decode graphs; all-GPU Qwen3 decode kernel list;
# old (c373032, scratch/old) vs new decode tok/s, alternating, same process setup
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
(cd scratch/old && ln -sfn ../converters edge_moe/converters && ln -sfn ../tui edge_moe/tui && ln -sfn ../profiles edge_moe/profiles_data)
OLDPP=$WORK/shim:$PWD/scratch/old:$WORK/site
env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 330 python3 -m pytest -q -x -p no:cacheprovider tests/test_route_kernels.py \
  tests/test_norm_kernels.py tests/test_quant_kernels.py tests/test_pinned_layers.py \
  tests/test_executor_parity.py -k "not no_memory_growth and (route or norm or quant or pinned or graph or resident or streaming or triton)" 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
echo "tests done at $((SECONDS-T0)) s"
env PYTHONPATH=$PP timeout 60 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | grep -v "  seq" > $OUT/decode_prof_new.txt; head -20 $OUT/decode_prof_new.txt
for i in 1 2; do
  for v in old new; do
    P=$PP; [ $v = old ] && P=$OLDPP
    echo "$v: $(env PYTHONPATH=$P MODES=on timeout 60 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep 'tok/s')"
  done
done | tee $OUT/ab_old_new.txt
echo "total $((SECONDS-T0)) s"
