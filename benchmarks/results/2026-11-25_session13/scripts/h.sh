#!/usr/bin/env bash
# session 13 call H: the "graph" test selection twice after HybridModel.close drops its graphs (call G: 1 failed in it)
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
for i in 1 2; do env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q tests/test_executor_parity.py -k graph 2>&1 | tee $OUT/graph_tests_$i.txt | grep -E "^FAILED|passed|failed"; done
echo "total $((SECONDS-T0)) s"
