"""edge-moe: Mixture-of-Experts inference with a GPU expert cache and ggml CPU experts."""

import os

# How libgomp's idle worker threads wait (ggml's CPU kernels; llama-cpp-python builds ggml
# with OpenMP, and torch has its own libgomp). It must be set before either loads (before
# torch or llama_cpp is imported); a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
# - With an NVIDIA driver the CPU path computes a layer's misses while torch's work runs on the
#   GPU: libgomp's default (spin a while, then sleep) keeps the team awake between layers. Waking
#   sleeping threads costs every call ~0.3 ms: on the H100 box a T=1 call with one 2.65 MB expert
#   took 0.375 ms passive vs 0.08 ms spinning, and Qwen3-30B decode went 18.6 -> 27.9 tok/s
#   (benchmarks/cpu_call_gaps.py, 2026-11-24). llama.cpp runs with the same default.
# - Without one, torch's CPU kernels and ggml share the cores, and two spinning runtimes steal
#   each other's: on a 2-core machine a tiny model's decode step took 116 ms instead of 2 ms.
#   Passive waiting lets idle threads sleep.
_NVIDIA_DRIVER = os.path.exists("/proc/driver/nvidia/version")
if "GOMP_SPINCOUNT" not in os.environ and not _NVIDIA_DRIVER:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
