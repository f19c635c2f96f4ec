"""edge-moe: Mixture-of-Experts inference with a GPU expert cache and ggml CPU experts."""

__version__ = "0.1.0"
