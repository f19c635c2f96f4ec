"""edge-moe: Mixture-of-Experts inference with a GPU expert cache and ggml CPU experts."""

import os

# ggml (llama-cpp-python builds it with OpenMP) and torch's CPU kernels share the cores. By
# default libgomp's idle threads spin after each parallel region, so the two runtimes steal
# each other's cores: on a 2-core machine a tiny model's decode step took 116 ms instead of
# 2 ms. Passive waiting lets idle threads sleep; it must be set before libgomp loads (before
# torch or llama_cpp is imported), and a user's own setting (a policy or a spin count) wins.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
