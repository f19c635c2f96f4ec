#!/usr/bin/env bash
# edge-moe vs llama.cpp at the same VRAM budget, on the GPU machine (device tool), resumable and
# splittable so that every call ends inside the 10-minute limit.
#
#   bash benchmarks/gpu_machine/bench_vs_llamacpp.sh --shape qwen3 --budgets 6,12,24 --engines llama,natural,replay
#
# Engines, in this order: build (llama.cpp with CUDA, build_llama_cuda.sh, ~5 min incl. packing),
# llama (llama_bench_runner.py: -ngl 99 --n-cpu-moe N fitting each budget, pp512 and tg128 at depth
# 512, -r REPS), natural / replay (`edge-moe bench --vram-budget B` with the model's routing /
# with a replayed trace: shared/traces' Mixtral trace (problem 1, 252 tokens, wraps) on mixtral,
# edge_moe.trace_synth's default Qwen3 trace on qwen3).
# Each step is skipped, with a "run again" line, when less than its estimate is left of DEADLINE_S;
# what a warm machine already has (build, model file, results) is reused. Every call returns the
# results so far: $OUT/results.md, $OUT/results.json (report), $OUT/raw.tgz, $OUT/logs.tgz.
#
# Here first: benchmarks/gpu_machine/prepare_bench_carry.sh. Carry: .carry/llama_src .carry/whl .carry/traces
# (or .carry/vocab + .carry/llama_cuda_bin once the packed binaries came back: no rebuild).
# Env: THREADS (16), REPS (3), EDGE_MAX_S (90: measuring time per edge-moe bench before decoding stops),
# DEADLINE_S (540), N_PROMPT (512), N_GEN (128), WORK, OUT, LAYERS (small test files), LLAMA_BENCH + NGL (a given llama-bench, e.g. a
# CPU build with NGL=0 for a local test), PYTHON (python3).
set -uo pipefail
T0=$SECONDS
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
SHAPE=qwen3; BUDGETS=6,12,24; ENGINES=llama,natural,replay
while [ $# -gt 0 ]; do
  case $1 in
    --shape) SHAPE=$2; shift 2 ;;
    --budgets) BUDGETS=$2; shift 2 ;;
    --engines) ENGINES=$2; shift 2 ;;
    *) echo "unknown argument $1 (--shape mixtral|qwen3 --budgets 6,12,24 --engines build,llama,natural,replay)"; exit 2 ;;
  esac
done
case $SHAPE in mixtral|qwen3) ;; *) echo "--shape must be mixtral or qwen3, got $SHAPE"; exit 2 ;; esac
echo "$BUDGETS" | grep -Eq '^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$' || { echo "--budgets must be GiB values like 6,12,24"; exit 2; }
THREADS=${THREADS:-16}; REPS=${REPS:-3}; EDGE_MAX_S=${EDGE_MAX_S:-90}; DEADLINE_S=${DEADLINE_S:-540}
N_PROMPT=${N_PROMPT:-512}; N_GEN=${N_GEN:-128}
if [ "$SHAPE" = mixtral ]; then LLAMA_EST=90; EDGE_EST=90; else LLAMA_EST=45; EDGE_EST=70; fi  # seconds per budget
LAYERS=${LAYERS:-}; NGL=${NGL:-99}; PY=${PYTHON:-python3}
CANDIDATES="/root /tmp /var/tmp /mnt /data"
if [ -z "${WORK:-}" ]; then
  for d in $CANDIDATES; do [ -d "$d/edge_moe_bench" ] && WORK=$d/edge_moe_bench && break; done
fi
if [ -z "${WORK:-}" ]; then  # the local disk with the most room
  WORK=$(for d in $CANDIDATES; do [ -d "$d" ] && [ -w "$d" ] && echo "$(df -Pk "$d" | awk 'NR==2{print $4}') $d"; done |
         sort -n | tail -1 | cut -d' ' -f2)/edge_moe_bench
fi
OUT=${OUT:-$WORK/out}
RES=$WORK/results; LOGS=$WORK/logs
mkdir -p "$WORK" "$OUT" "$RES" "$LOGS"
log() { echo "[$((SECONDS - T0))s] $*" | tee -a "$LOGS/steps.log"; }
left() { echo $((DEADLINE_S - (SECONDS - T0))); }
finish() {
  if ls "$RES"/edge_*.json >/dev/null 2>&1; then
    $PY -m benchmarks.bench_report "$RES" --out-md "$OUT/results.md" --out-json "$OUT/results.json" > /dev/null 2>>"$LOGS/steps.log"
  fi
  tar czf "$OUT/raw.tgz" -C "$WORK" results 2>/dev/null
  tar czf "$OUT/logs.tgz" -C "$WORK" logs 2>/dev/null
  echo; echo "===== results.md ====="; cat "$OUT/results.md" 2>/dev/null | head -40
}
trap finish EXIT
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null; nproc; free -g | head -2
  echo "WORK=$WORK SHAPE=$SHAPE BUDGETS=$BUDGETS ENGINES=$ENGINES THREADS=$THREADS REPS=$REPS LAYERS=$LAYERS"; } | tee -a "$LOGS/env.txt"

# Python side: carried wheels, a stand-in llama_cpp package whose lib/ is the ggml CPU backend built
# with llama-bench (edge_moe.ggml_lib opens only libggml-base and libggml-cpu), package-dir links
if ! $PY -c "import gguf, platformdirs" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .carry/whl/*.whl > /dev/null || { log "wheels failed"; exit 1; }
fi
ln -sfn ../converters edge_moe/converters; ln -sfn ../tui edge_moe/tui; ln -sfn ../profiles edge_moe/profiles_data
export PYTHONPATH=$WORK/shim:$REPO:$WORK/site PYTHONUNBUFFERED=1

# llama.cpp with CUDA: a given binary, else the build on this machine, else carried packed binaries, else build
BUILD=$WORK/build-cuda
if [ -z "${LLAMA_BENCH:-}" ]; then
  LLAMA_BENCH=$BUILD/bin/llama-bench
  if [ ! -x "$LLAMA_BENCH" ] && ls .carry/llama_cuda_bin/llama_cuda_bin.tar.xz* >/dev/null 2>&1; then
    mkdir -p "$BUILD" && cat .carry/llama_cuda_bin/llama_cuda_bin.tar.xz* | xz -d | tar -C "$BUILD" -xf - \
      && log "unpacked the carried llama.cpp CUDA binaries"
  fi
  if [ ! -x "$LLAMA_BENCH" ] || [[ ,$ENGINES, == *,build,* ]]; then
    if [ "$(left)" -lt 330 ] && [ ! -x "$LLAMA_BENCH" ]; then log "SKIPPED build: $(left) s left; run again with --engines build"; exit 0; fi
    WORK=$WORK BUILD=$BUILD OUT=$OUT bash benchmarks/gpu_machine/build_llama_cuda.sh 2>&1 | tee -a "$LOGS/steps.log" | tail -5
  fi
fi
[ -x "$LLAMA_BENCH" ] || { log "no llama-bench"; exit 1; }
LIBDIR=$(dirname "$(readlink -f "$LLAMA_BENCH")")
export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}  # the packed binaries' rpath names the build folder they came from
mkdir -p "$WORK/shim/llama_cpp/lib"
echo '"""Stand-in for llama-cpp-python: edge_moe.ggml_lib uses only lib/ (the ggml built with llama-bench)."""' \
  > "$WORK/shim/llama_cpp/__init__.py"
for f in libggml-base.so libggml-cpu.so; do ln -sf "$LIBDIR/$f" "$WORK/shim/llama_cpp/lib/$f"; done

# the model file (on local disk, never carried) and the replay trace
MODEL=$WORK/$SHAPE${LAYERS:+-${LAYERS}L}.gguf
if [ ! -f "$MODEL" ]; then
  VOCAB=.carry/vocab; [ -d "$VOCAB" ] || VOCAB=.carry/llama_src/models
  t=$SECONDS
  $PY -m benchmarks.synthetic_gguf --shape "$SHAPE" --out "$MODEL" ${LAYERS:+--layers $LAYERS} --quiet --vocab-dir "$VOCAB" \
    || { log "writing $MODEL failed"; exit 1; }
  log "wrote $MODEL ($(du -h "$MODEL" | cut -f1)) in $((SECONDS - t)) s"
fi
if [ "$SHAPE" = qwen3 ]; then
  TRACE=$WORK/qwen3${LAYERS:+-${LAYERS}L}-trace.npz; PROBLEM=0
  [ -f "$TRACE" ] || $PY -m edge_moe.trace_synth --shape qwen3 --tokens 1024 ${LAYERS:+--layers $LAYERS} --out "$TRACE" > /dev/null
else
  TRACE=.carry/traces/mixtral-8x7b-instruct-humaneval.npz; PROBLEM=1
fi

# llama.cpp: every budget in one runner call (it measures the base VRAM once and keeps earlier rows)
if [[ ,$ENGINES, == *,llama,* ]]; then
  n_b=$(echo "$BUDGETS" | tr ',' '\n' | wc -l)
  est=$(( LLAMA_EST * n_b + 40 ))
  if [ "$(left)" -lt "$est" ]; then log "SKIPPED llama: $(left) s left, needs ~$est; run again with --engines llama"
  else
    log "llama.cpp on $SHAPE, budgets $BUDGETS"
    $PY -m benchmarks.llama_bench_runner --llama-bench "$LLAMA_BENCH" --model "$MODEL" --budgets "$BUDGETS" \
      --threads "$THREADS" --reps "$REPS" --ngl "$NGL" -p "$N_PROMPT" -n "$N_GEN" --label "$SHAPE" --out "$RES/llama_$SHAPE.json" \
      --log "$LOGS/llama_bench_$SHAPE.log" 2>&1 | tee -a "$LOGS/steps.log"
  fi
fi

# edge-moe: one bench per budget and routing mode
for mode in natural replay; do
  [[ ,$ENGINES, == *,$mode,* ]] || continue
  if [ "$mode" = replay ] && [ ! -f "$TRACE" ]; then log "SKIPPED replay: no trace $TRACE (carry .carry/traces)"; continue; fi
  for b in $(echo "$BUDGETS" | tr ',' ' '); do
    est=$(( EDGE_MAX_S + EDGE_EST ))
    if [ "$(left)" -lt "$est" ]; then
      log "SKIPPED edge-moe $mode $b GiB: $(left) s left, needs ~$est; run again with --budgets $b --engines $mode"; continue
    fi
    log "edge-moe on $SHAPE, $b GiB, $mode"
    extra=(); [ "$mode" = replay ] && extra=(--routing replay --trace "$TRACE" --trace-problem "$PROBLEM")
    timeout $(( $(left) + 30 )) $PY -m edge_moe.cli bench -m "$MODEL" --vram-budget "$b" -t "$THREADS" -r "$REPS" \
      -p "$N_PROMPT" -n "$N_GEN" \
      --label "$SHAPE" --max-seconds "$EDGE_MAX_S" "${extra[@]}" -o "$RES/edge_${SHAPE}_${b}_$mode.json" \
      > "$LOGS/edge_${SHAPE}_${b}_$mode.txt" 2>&1
    rc=$?
    grep -E "^bench:|^(prefill|decode|cache|bytes|memory|planner)" "$LOGS/edge_${SHAPE}_${b}_$mode.txt" | tee -a "$LOGS/steps.log"
    [ $rc = 0 ] || { log "edge-moe $mode $b GiB failed (rc $rc)"; tail -5 "$LOGS/edge_${SHAPE}_${b}_$mode.txt"; }
  done
done
log "total $((SECONDS - T0)) s"
