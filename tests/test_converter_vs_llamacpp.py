"""Our Mixtral GGUF against the one llama.cpp's own convert_hf_to_gguf.py writes from the same checkpoint.

The reference converter ships in the llama-cpp-python sdist (vendor/llama.cpp/);
scripts/setup.sh unpacks it and scripts/test.sh points EDGE_MOE_LLAMA_CPP_SRC at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

REPO = Path(__file__).resolve().parents[1]
# keys both converters must agree on (values compared exactly)
KEY_METADATA = [
    "general.architecture", "general.file_type", "llama.block_count", "llama.context_length",
    "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
    "llama.expert_count", "llama.expert_used_count", "llama.rope.dimension_count", "llama.vocab_size",
    "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.chat_template", "tokenizer.ggml.add_bos_token", "general.type",
]
# keys only llama.cpp's converter writes: cosmetic ones, and add_sep_token, which it derives
# from the pair template of tokenizer.json (edge-moe never encodes sentence pairs)
REFERENCE_ONLY_KEYS = {"general.size_label", "tokenizer.ggml.add_sep_token"}


def _llama_cpp_src() -> Path:
    src = os.environ.get("EDGE_MOE_LLAMA_CPP_SRC") or str(REPO / ".cache/llama-cpp-python-src/vendor/llama.cpp")
    script = Path(src) / "convert_hf_to_gguf.py"
    if not script.is_file():
        if os.environ.get("EDGE_MOE_REQUIRE_REFERENCES"):
            pytest.fail(f"llama.cpp's converter not found at {script} (run scripts/setup.sh)")
        pytest.skip(f"llama.cpp's converter not found at {script} (run scripts/setup.sh)")
    return Path(src)


def _reference_gguf(model_dir: Path, out: Path, outtype: str) -> Path:
    src = _llama_cpp_src()
    proc = subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir),
                           "--outfile", str(out), "--outtype", outtype],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"llama.cpp's converter failed:\n{proc.stderr[-3000:]}"
    return out


def _field(reader: GGUFReader, key: str) -> object:
    f = reader.get_field(key)
    if f is None:
        return None
    return f.contents()


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_mixtral_matches_llama_cpp_converter(outtype: str, tiny_checkpoint: Callable[[str], Path],
                                             tiny_gguf: Callable[[str, str], Path], tmp_path: Path) -> None:
    model_dir = tiny_checkpoint("mixtral")
    ref = GGUFReader(_reference_gguf(model_dir, tmp_path / "ref.gguf", outtype))
    ours = GGUFReader(tiny_gguf("mixtral", outtype))

    ref_t = {t.name: t for t in ref.tensors}
    our_t = {t.name: t for t in ours.tensors}
    assert sorted(our_t) == sorted(ref_t)
    for name, r in ref_t.items():
        o = our_t[name]
        assert (list(o.shape), o.tensor_type) == (list(r.shape), r.tensor_type), name
        same = np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(r.data).view(np.uint8))
        # F32/F16 and ggml's Q8_0 vs gguf-py's numpy Q8_0 round identically: the bytes must agree
        assert same, f"{name}: data differs from llama.cpp's converter"

    for key in KEY_METADATA:
        assert _field(ref, key) is not None, f"llama.cpp's converter wrote no {key}"
        assert _field(ours, key) == _field(ref, key), key
    assert set(ours.fields) == set(ref.fields) - REFERENCE_ONLY_KEYS
