# Sourced by one-off GPU-machine experiment scripts (benchmarks/results/*/scripts): the bench harness's setup
# (carried wheels, llama.cpp CUDA binaries, the llama_cpp shim) without running an engine, then the environment
# that runs edge-moe and its tests against that build. Env in: BUDGET (GiB, 24), SETUP_S (200).
# Sets WORK, T0, LIBDIR, LD_LIBRARY_PATH, PP (the PYTHONPATH for edge-moe from this tree).
set -u
export WORK=/tmp/emb PYTHONUNBUFFERED=1
T0=$SECONDS
(OUT=/tmp/o/setup DEADLINE_S=${SETUP_S:-200} bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 \
  --budgets "${BUDGET:-24}" --engines none > /tmp/setup.log 2>&1); echo "setup $((SECONDS-T0)) s"
LIBDIR=$(dirname "$(readlink -f $WORK/build-cuda/bin/llama-bench)")
export LD_LIBRARY_PATH=$LIBDIR
PP=$WORK/shim:$PWD:$WORK/site
