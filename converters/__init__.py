"""Hugging Face safetensors MoE checkpoints -> llama.cpp-compatible GGUF (installed as edge_moe.converters)."""
