"""The GGUF reader: correct views of good files, clear errors for malformed ones."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from edge_moe.errors import ModelFormatError, UnsupportedModelError
from edge_moe.gguf_file import GGUFFile
from edge_moe.model_config import read_config
from tests.gguf_factory import write_moe_gguf


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_moe_gguf(tmp_path / "m.gguf")


def test_views_match_gguf_py_reader(good: Path) -> None:
    ref = GGUFReader(good)
    with GGUFFile(good) as f:
        assert set(f.tensors) == {t.name for t in ref.tensors}
        for t in ref.tensors:
            ours = f.tensor(t.name)
            assert ours.shape == tuple(int(d) for d in t.shape)
            assert ours.ggml_type == t.tensor_type
            assert ours.nbytes == t.n_bytes
            np.testing.assert_array_equal(ours.data, np.asarray(t.data).view(np.uint8).reshape(-1))
        assert f.get("llama.expert_count", int) == 4
        assert f.get("tokenizer.ggml.tokens", list)[:2] == ["t0", "t1"]


def test_config_of_synthetic_mixtral(good: Path) -> None:
    with GGUFFile(good) as f:
        cfg = read_config(f)
    assert (cfg.arch, cfg.n_expert, cfg.n_expert_used, cfg.n_ff_expert, cfg.n_embd) == ("llama", 4, 2, 32, 64)
    assert cfg.normalize_topk and cfg.n_head_kv == 2 and cfg.n_vocab == 32


def _corrupt(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_bad_magic(good: Path) -> None:
    _corrupt(good, 0, b"GGML")
    with pytest.raises(ModelFormatError, match="bad magic") as e:
        GGUFFile(good)
    assert str(good) in str(e.value)


def test_unsupported_version(good: Path) -> None:
    _corrupt(good, 4, struct.pack("<I", 99))
    with pytest.raises(ModelFormatError, match="version 99"):
        GGUFFile(good)


@pytest.mark.parametrize("field_offset,what", [(8, "tensor count"), (16, "metadata count")])
def test_absurd_counts(good: Path, field_offset: int, what: str) -> None:
    _corrupt(good, field_offset, struct.pack("<Q", 1 << 60))
    with pytest.raises(ModelFormatError, match="absurd counts"):
        GGUFFile(good)


def test_absurd_string_length(good: Path) -> None:
    # the first key's length field sits right after the 24-byte header
    _corrupt(good, 24, struct.pack("<Q", 1 << 62))
    with pytest.raises(ModelFormatError, match="absurd length"):
        GGUFFile(good)


def test_truncated_data(good: Path) -> None:
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ModelFormatError, match="truncated data"):
        GGUFFile(good)


@pytest.mark.parametrize("keep", [3, 30, 200])
def test_truncated_header(good: Path, keep: int) -> None:
    good.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(ModelFormatError, match="not a GGUF|truncated"):
        GGUFFile(good)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="no such file"):
        GGUFFile(tmp_path / "absent.gguf")


def test_wrong_key_type(tmp_path: Path) -> None:
    path = write_moe_gguf(tmp_path / "m.gguf", extra={"llama.rope.freq_base_x": ("string", "x")})
    with GGUFFile(path) as f:
        with pytest.raises(ModelFormatError, match="has type string, expected int"):
            f.get("llama.rope.freq_base_x", int)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = write_moe_gguf(tmp_path / "m.gguf", arch="gpt2")
    with GGUFFile(path) as f, pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        read_config(f)


def test_dense_llama_is_refused(tmp_path: Path) -> None:
    path = write_moe_gguf(tmp_path / "m.gguf", n_expert=0)
    with GGUFFile(path) as f, pytest.raises(UnsupportedModelError, match="dense model"):
        read_config(f)


def test_inconsistent_expert_count(tmp_path: Path) -> None:
    path = write_moe_gguf(tmp_path / "m.gguf", extra={"llama.expert_used_count": ("uint32", 9)})
    with GGUFFile(path) as f, pytest.raises(ModelFormatError, match="expert_used_count 9"):
        read_config(f)


def test_tensor_offset_out_of_bounds(good: Path) -> None:
    ref = GGUFReader(good)
    last = ref.tensors[-1]
    # the offset field is the last u64 of the tensor info; find it by value and name order
    raw = bytearray(good.read_bytes())
    name = last.name.encode()
    pos = raw.index(name) + len(name)
    n_dims = struct.unpack_from("<I", raw, pos)[0]
    off_pos = pos + 4 + 8 * n_dims + 4
    struct.pack_into("<Q", raw, off_pos, 1 << 40)
    good.write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError, match="truncated data|not aligned"):
        GGUFFile(good)
