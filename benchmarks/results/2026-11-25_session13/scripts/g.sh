#!/usr/bin/env bash
# session 13 call G: is call F's decode-graph capture failure (olmoe q8_0, prefill-graph test) flaky, or the SlotStore cleanup's?
BUDGET=24 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh
t() { env PYTHONPATH=$PP EDGE_MOE_REFERENCE=cpu timeout 200 python3 -m pytest -q -p no:randomly tests/test_executor_parity.py -k "$1" 2>&1 | tail -1; }
for i in 1 2 3; do echo "new $i: $(t 'prefill_graph_matches and olmoe')"; done
cp edge_moe/gpu_slots.py /tmp/new_slots.py; cp scratch/gpu_slots_old.py edge_moe/gpu_slots.py
for i in 1 2 3; do echo "old $i: $(t 'prefill_graph_matches and olmoe')"; done
cp /tmp/new_slots.py edge_moe/gpu_slots.py
echo "all graphs new: $(t 'graph')"
echo "total $((SECONDS-T0)) s"
