"""Bad inputs to the converter: each a clear error naming the file, no hang, no output file left."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_moe.converters.hf_to_gguf import convert
from edge_moe.errors import ModelFormatError, UnsupportedModelError


@pytest.fixture
def ckpt(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("mixtral"), dst)
    return dst


def _convert_fails(model_dir: Path, out: Path, err: type[Exception], match: str) -> ModelFormatError:
    with pytest.raises(err, match=match) as e:
        convert(model_dir, out, outtype="q8_0", progress=False)
    assert not out.exists(), "a failed conversion left an output file"
    assert not out.with_name(out.name + ".partial").exists(), "a failed conversion left a partial file"
    return e.value  # type: ignore[return-value]


def _weights_file(model_dir: Path) -> Path:
    return sorted(model_dir.glob("*.safetensors"))[0]


def test_missing_directory(tmp_path: Path) -> None:
    _convert_fails(tmp_path / "nope", tmp_path / "o.gguf", ModelFormatError, "not a directory")


def test_missing_config(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").unlink()
    e = _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "missing config.json")
    assert "config.json" in str(e)


def test_missing_weights(ckpt: Path, tmp_path: Path) -> None:
    for p in ckpt.glob("*.safetensors*"):
        p.unlink()
    _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "no model.safetensors")


def test_missing_tokenizer(ckpt: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.model", "tokenizer.json"):
        (ckpt / name).unlink(missing_ok=True)
    _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "no tokenizer")


def test_unsupported_architecture(ckpt: Path, tmp_path: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _convert_fails(ckpt, tmp_path / "o.gguf", UnsupportedModelError, "GPT2LMHeadModel.*not supported")


def test_truncated_safetensors(ckpt: Path, tmp_path: Path) -> None:
    f = _weights_file(ckpt)
    f.write_bytes(f.read_bytes()[:-1000])
    e = _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "truncated safetensors")
    assert f.name in str(e)


def test_absurd_safetensors_header(ckpt: Path, tmp_path: Path) -> None:
    f = _weights_file(ckpt)
    raw = bytearray(f.read_bytes())
    struct.pack_into("<Q", raw, 0, 1 << 60)
    f.write_bytes(bytes(raw))
    _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "header length")


def test_shape_mismatch(ckpt: Path, tmp_path: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "has shape .* but config.json implies")


def test_too_few_layers_in_config(ckpt: Path, tmp_path: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_hidden_layers"] -= 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _convert_fails(ckpt, tmp_path / "o.gguf", ModelFormatError, "no place in a llama GGUF")


def test_bad_outtype(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown --outtype"):
        convert(ckpt, tmp_path / "o.gguf", outtype="q3_xyz", progress=False)


def test_cli_reports_error_without_traceback(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "edge_moe.cli", "convert", str(ckpt), "--outfile",
                           str(tmp_path / "o.gguf")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config.json" in proc.stderr and "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_interrupted_conversion_leaves_nothing(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure in the middle of writing (here: a simulated Ctrl-C) removes the partial file."""
    from edge_moe.converters import hf_to_gguf

    calls = {"n": 0}
    real = hf_to_gguf.encode_rows

    def interrupt_late(rows, ggml_type):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(rows, ggml_type)

    monkeypatch.setattr(hf_to_gguf, "encode_rows", interrupt_late)
    out = tmp_path / "o.gguf"
    with pytest.raises(KeyboardInterrupt):
        convert(ckpt, out, outtype="q8_0", progress=False)
    assert calls["n"] == 20
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
