#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs everything (scripts/setup.sh), then runs pytest.
# Extra arguments go to pytest (e.g. -k converter, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export EDGE_MOE_LLAMA_CPP_SRC="$PWD/.cache/llama-cpp-python-src/vendor/llama.cpp"
export EDGE_MOE_REQUIRE_REFERENCES=1  # the llama.cpp cross-checks fail, never skip, if their inputs are missing
exec .venv/bin/python -m pytest "$@"
