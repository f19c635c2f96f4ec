#!/usr/bin/env bash
# Our CPU expert path vs llama.cpp's CPU-only decode, on the GPU machine (device tool), one call:
# build llama-bench + ggml (CPU only, GGML_NATIVE, OpenMP as llama-cpp-python builds it) from the
# slim tree benchmarks/gpu_machine/make_llama_src.sh makes, point a stand-in `llama_cpp` package at
# those libraries (so our ctypes binding loads the same ggml), write synthetic full-size Q4_0 GGUFs
# on local disk, and run benchmarks/cpu_path_vs_llamacpp.py on each.
#
# Here, once:   benchmarks/gpu_machine/make_llama_src.sh          (-> .carry/llama_src, .carry/whl)
# Device call:  run(command="bash benchmarks/gpu_machine/cpu_path_vs_llamacpp.sh mixtral qwen3",
#                   carry=[".carry/llama_src", ".carry/whl"], timeout_s=600)
# Locally (test): WORK=/work/tmp/cmp OUT=/work/tmp/cmp/out THREADS=2 JOBS=2 LAYERS=2 \
#                   bash benchmarks/gpu_machine/cpu_path_vs_llamacpp.sh qwen3
#
# Env: THREADS (16), JOBS (build, 16), LAYERS (fewer layers: test files), WORK (build + model files;
# default: the local folder with the most free space), OUT (results; the device tool sets it),
# DEADLINE_S (510: a shape is skipped when less than its estimate is left, so that the call ends
# inside the 600 s limit; run again for the skipped ones: the build and files stay on a warm machine),
# BUILD_TAG + CMAKE_EXTRA (a second build variant), REPS (3), SECONDS_PER_WINDOW (3), KEEP_FILES (1; 0 deletes each model file after its run).
# Results: $OUT/results.md (tables), $OUT/<shape>.json, $OUT/logs.tgz. The last lines printed are the tables.
set -uo pipefail
T0=$SECONDS
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
SHAPES=${*:-mixtral qwen3}
THREADS=${THREADS:-16}
JOBS=${JOBS:-16}
LAYERS=${LAYERS:-}
REPS=${REPS:-3}
SECONDS_PER_WINDOW=${SECONDS_PER_WINDOW:-3}
DEADLINE_S=${DEADLINE_S:-510}
KEEP_FILES=${KEEP_FILES:-1}
SRC=${LLAMA_SRC:-$REPO/.carry/llama_src}
WHL=${WHL_DIR:-$REPO/.carry/whl}
OUT=${OUT:-$REPO/.carry/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

CANDIDATES="/root /tmp /var/tmp /mnt /data $REPO/.."
if [ -z "${WORK:-}" ]; then  # an earlier call's folder (warm machine: build and files reused) ...
  for d in $CANDIDATES; do [ -d "$d/edge_moe_cmp" ] && WORK=$d/edge_moe_cmp && break; done
fi
if [ -z "${WORK:-}" ]; then  # ... else the local disk with the most room (never under $OUT: it comes back)
  WORK=$(for d in $CANDIDATES; do
           [ -d "$d" ] && [ -w "$d" ] && echo "$(df -Pk "$d" | awk 'NR==2{print $4}') $d"; done |
         sort -n | tail -1 | cut -d' ' -f2)/edge_moe_cmp
fi
mkdir -p "$WORK"
LOGS=$WORK/logs  # logs are tarred into $OUT/logs.tgz at exit: the device tool returns at most 8 files
rm -rf "$LOGS"; mkdir -p "$LOGS"
trap 'tar czf "$OUT/logs.tgz" -C "$WORK" logs 2>/dev/null' EXIT
TAG=${BUILD_TAG:-}  # e.g. BUILD_TAG=-noomp CMAKE_EXTRA=-DGGML_OPENMP=OFF: a second ggml build, side by side
BUILD=$WORK/build$TAG
log() { echo "[$((SECONDS - T0))s] $*" | tee -a "$LOGS/steps.log"; }

{ echo "date: $(date -u +%FT%TZ)"; uname -a; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|L3|NUMA node'
  free -g; df -h "$WORK"; $PY --version; nproc; echo "WORK=$WORK THREADS=$THREADS LAYERS=$LAYERS"
} > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

# 1. gguf (pure Python) for the machine's Python, if missing
if ! $PY -c "import gguf" 2>/dev/null; then
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import gguf" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHL"/gguf-*.whl \
    || { log "gguf install failed"; exit 1; }
fi

# 2. llama-bench + ggml, CPU only (kept on a warm machine: a second call skips this)
if [ ! -x "$BUILD/bin/llama-bench" ]; then
  log "building llama-bench (-j$JOBS)"
  t=$SECONDS
  cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CCACHE=OFF \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=ON \
      ${CMAKE_EXTRA:-} > "$LOGS/cmake$TAG.log" 2>&1 \
    && ninja -C "$BUILD" -j"$JOBS" llama-bench > "$LOGS/build$TAG.log" 2>&1 \
    || { tail -40 "$LOGS/cmake$TAG.log" "$LOGS/build$TAG.log"; log "build failed"; exit 1; }
  log "built in $((SECONDS - t)) s"
  grep -E "OpenMP|march|AMX|Adding CPU" "$LOGS/cmake$TAG.log" | head -8
fi

# 3. stand-in llama_cpp package: edge_moe.ggml_lib opens llama_cpp/lib/libggml-*.so by path
SHIM=$WORK/shim$TAG
mkdir -p "$SHIM/llama_cpp/lib"
echo '"""Stand-in for llama-cpp-python: edge_moe.ggml_lib uses only lib/ (the ggml built here)."""' \
  > "$SHIM/llama_cpp/__init__.py"
for f in libggml-base.so libggml-cpu.so libggml.so libllama.so; do ln -sf "$BUILD/bin/$f" "$SHIM/llama_cpp/lib/$f"; done
export PYTHONPATH=$SHIM:$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

# 4. per shape: synthetic file (if not there), then llama-bench and ours on it
estimate() { case $1 in mixtral) echo 240 ;; *) echo 150 ;; esac; }  # seconds incl. writing the file
for shape in $SHAPES; do
  left=$((DEADLINE_S - (SECONDS - T0)))
  if [ -z "$LAYERS" ] && [ "$left" -lt "$(estimate "$shape")" ]; then
    log "SKIPPED $shape: ${left}s left of DEADLINE_S, needs ~$(estimate "$shape")s; run again with: $shape"
    continue
  fi
  model=$WORK/$shape${LAYERS:+-${LAYERS}L}.gguf
  if [ ! -f "$model" ]; then
    log "writing $model"
    t=$SECONDS
    $PY -m benchmarks.synthetic_gguf --shape "$shape" --out "$model" ${LAYERS:+--layers $LAYERS} --quiet \
      --vocab-dir "$SRC/models" || { log "writing $shape failed"; continue; }
    log "wrote $(du -h "$model" | cut -f1) in $((SECONDS - t)) s"
  fi
  log "comparing on $shape"
  $PY benchmarks/cpu_path_vs_llamacpp.py --model "$model" --llama-bench "$BUILD/bin/llama-bench" \
      --label "$shape${LAYERS:+ (${LAYERS} layers)}${TAG:+ [build$TAG]}" --threads "$THREADS" --reps "$REPS" \
      --seconds "$SECONDS_PER_WINDOW" --json "$OUT/$shape$TAG.json" --md "$OUT/results.md" \
      --llama-log "$LOGS/llama_bench_$shape$TAG.log" > "$LOGS/compare_$shape$TAG.txt" 2>&1
  rc=$?
  grep -v "^repack: repack tensor" "$LOGS/compare_$shape$TAG.txt" | tail -25
  log "done $shape (rc=$rc)"
  [ "$KEEP_FILES" = 0 ] && rm -f "$model"
done
log "total $((SECONDS - T0)) s"
echo; echo "===== results.md ====="; cat "$OUT/results.md" 2>/dev/null
