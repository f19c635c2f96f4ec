# Sourced by the GPU-machine scripts that need the full llama-cpp-python (CPU build, for the
# ggml libraries and the llama.cpp reference) and edge-moe importable from the source tree.
# Carry [".gpu"]: the wheels in .gpu/whl and the slimmed sdist in .gpu/lcp. Sets OUT, SITE, PYTHONPATH.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=/tmp/site
if [ ! -e $SITE/llama_cpp ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE .gpu/whl/*.whl || exit 1
  (cd .gpu/lcp && CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-build-isolation --no-deps --no-index --target $SITE . ) > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; exit 1; }
fi
ln -sfn ../converters edge_moe/converters; ln -sfn ../tui edge_moe/tui; ln -sfn ../profiles edge_moe/profiles_data
export PYTHONPATH=$PWD:$SITE
