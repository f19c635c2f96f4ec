#!/usr/bin/env bash
# session 14 call E: route_pairs (router + routing in one launch) config sweep; then the decode kernel list again
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
env PYTHONPATH=$PP timeout 120 python3 scratch/router_sweep.py 2>&1 | grep -v -i warn | tee $OUT/router_sweep.txt
env PYTHONPATH=$PP timeout 60 python3 scratch/decode_prof.py $WORK/qwen3.gguf 24 2>&1 | grep -v -i warn | grep -v "  seq" > $OUT/decode_prof_e.txt; head -12 $OUT/decode_prof_e.txt
echo "total $((SECONDS-T0)) s"
