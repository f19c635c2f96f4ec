"""A Hugging Face checkpoint directory, read lazily and validated.

config.json plus one `model.safetensors` or several shards with
`model.safetensors.index.json`. Safetensors headers are parsed here (8-byte
length, JSON, then raw data) so that every tensor's dtype, shape and byte range
is checked against its file before anything is read; tensors are then read one
at a time from a memory map, which keeps the converter's memory bounded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.errors import ModelFormatError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# safetensors dtype -> (numpy dtype used to read the raw bytes, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("<i1", 1), "U8": ("<u1", 1),
    "BOOL": ("<u1", 1),
}


@dataclass(frozen=True)
class HFTensor:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in `file`
    nbytes: int


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ModelFormatError(path, f"missing {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(path, f"{what} is not valid JSON: {e}") from None


def read_safetensors_header(path: Path) -> dict[str, HFTensor]:
    """Parse and validate one safetensors file's header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise ModelFormatError(path, f"truncated safetensors file: {size} bytes, no header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ModelFormatError(path, f"safetensors header length {header_len} is absurd or runs past "
                                         f"the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFormatError(path, f"safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ModelFormatError(path, "safetensors header is not a JSON object")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, HFTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(path, f"tensor {name!r}: malformed header entry {info!r}") from None
        if dtype not in _DTYPES:
            raise ModelFormatError(path, f"tensor {name!r}: unsupported dtype {dtype}")
        if any(d < 0 for d in shape):
            raise ModelFormatError(path, f"tensor {name!r}: negative dimension in shape {list(shape)}")
        nbytes = int(np.prod(shape, dtype=object)) * _DTYPES[dtype][1]
        if not (0 <= begin <= end and end - begin == nbytes):
            raise ModelFormatError(path, f"tensor {name!r}: byte range {begin}..{end} does not hold "
                                         f"{dtype} {list(shape)} ({nbytes} bytes)")
        if end > data_size:
            raise ModelFormatError(path, f"truncated safetensors file: tensor {name!r} needs bytes up to "
                                         f"{end} of a data section of {data_size} bytes")
        tensors[name] = HFTensor(name, path, dtype, shape, data_start + begin, nbytes)
    return tensors


class HFCheckpoint:
    """config.json, tensor index and lazy reads of one HF checkpoint directory."""

    def __init__(self, model_dir: str | Path) -> None:
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise ModelFormatError(self.dir, "not a directory (expected a Hugging Face checkpoint directory)")
        self.config: dict[str, Any] = _load_json(self.dir / "config.json", "config.json")
        if not isinstance(self.config, dict):
            raise ModelFormatError(self.dir / "config.json", "config.json is not a JSON object")
        self.tensors = self._index_tensors()

    def _index_tensors(self) -> dict[str, HFTensor]:
        index_path = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        if index_path.is_file():
            index = _load_json(index_path, "safetensors index")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFormatError(index_path, "no 'weight_map' object in the safetensors index")
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, files = None, [single.name]
        else:
            shards = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not shards:
                raise ModelFormatError(self.dir, "no model.safetensors, no model.safetensors.index.json and no "
                                                 "*.safetensors files (only safetensors checkpoints are supported)")
            weight_map, files = None, shards
        tensors: dict[str, HFTensor] = {}
        for name in files:
            path = self.dir / name
            if not path.is_file():
                raise ModelFormatError(path, "missing safetensors shard named in the index")
            for tname, t in read_safetensors_header(path).items():
                if tname in tensors:
                    raise ModelFormatError(path, f"tensor {tname!r} also stored in {tensors[tname].file.name}")
                tensors[tname] = t
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise ModelFormatError(index_path, f"{len(missing)} tensors named in the index are in no shard, "
                                                   f"e.g. {missing[0]!r}")
        return tensors

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """One tensor (or rows `start:stop` of its first axis) as a fresh float32 array.

        Read with plain file reads, not a memory map, so that pages of the
        checkpoint do not accumulate in our resident memory; bf16 widens exactly.
        """
        if name not in self.tensors:
            raise ModelFormatError(self.dir, f"missing tensor {name!r}")
        t = self.tensors[name]
        np_dtype, itemsize = _DTYPES[t.dtype]
        shape = t.shape
        offset = t.begin
        if rows is not None:
            start, stop = rows
            if not shape or not 0 <= start <= stop <= shape[0]:
                raise ValueError(f"rows {start}:{stop} out of range for {name} {list(shape)}")
            row_elems = int(np.prod(shape[1:], dtype=np.int64))
            offset += start * row_elems * itemsize
            shape = (stop - start, *shape[1:])
        count = int(np.prod(shape, dtype=np.int64))
        with open(t.file, "rb") as f:
            raw = np.fromfile(f, dtype=np_dtype, count=count, offset=offset)
        if raw.size != count:
            raise ModelFormatError(t.file, f"truncated while reading tensor {name!r}")
        raw = raw.reshape(shape)
        if t.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False) if t.dtype != "F32" else raw

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.tensors:
            raise ModelFormatError(self.dir, f"missing tensor {name!r}")
        return self.tensors[name].shape

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
