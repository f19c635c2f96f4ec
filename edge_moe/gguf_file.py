"""A validating, memory-mapped GGUF reader.

We parse the file ourselves (rather than through gguf.GGUFReader) so that every
count, length, type and offset is checked against the file's size before it is
used: a malformed or truncated file gives a ModelFormatError naming the file and
the problem, never a huge allocation, a hang or a read out of bounds.

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 n_tensors,
u64 n_kv, then n_kv (key, type, value), then n_tensors (name, n_dims, dims,
ggml type, offset), padding to `general.alignment`, then the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edge_moe.errors import ModelFormatError

GGUF_MAGIC = b"GGUF"
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 1 << 28  # 256 MiB: far beyond any chat template or tokenizer entry
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32

# GGUF value type id -> (struct format, size in bytes); 8 = string and 9 = array are handled apart.
_SCALAR_FORMATS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY_DTYPES: dict[int, str] = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
    10: "<u8", 11: "<i8", 12: "<f8",
}
VALUE_TYPE_NAMES = {
    0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
    7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFValue:
    """One metadata value with its GGUF type (arrays keep their element type)."""

    value: Any
    type: int
    element_type: int | None = None


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's header entry and a zero-copy view of its bytes in the mmap.

    `shape` is in ggml order (ne0 first: the row length); `data` is uint8 of
    `nbytes` bytes, read-only.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute offset in the file
    nbytes: int
    data: np.ndarray

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def row_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return self.shape[0] // block * type_size


class _Cursor:
    """Reads little-endian values from a buffer, checking every read against its end."""

    def __init__(self, path: Path, buf: memoryview) -> None:
        self.path = path
        self.buf = buf
        self.pos = 0

    def fail(self, problem: str) -> ModelFormatError:
        return ModelFormatError(self.path, problem)

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, "
                            f"file has {len(self.buf)} bytes")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, vtype: int, what: str) -> Any:
        fmt, size = _SCALAR_FORMATS[vtype]
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar(4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar(10, what))

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.u64(f"length of {what}")
        if length > limit:
            raise self.fail(f"{what} has an absurd length {length} (limit {limit})")
        raw = self.take(length, what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    def value(self, vtype: int, what: str) -> GGUFValue:
        if vtype in _SCALAR_FORMATS:
            v = self.scalar(vtype, what)
            return GGUFValue(bool(v) if vtype == 7 else v, vtype)
        if vtype == _STRING:
            return GGUFValue(self.string(what), vtype)
        if vtype == _ARRAY:
            etype = self.u32(f"element type of {what}")
            count = self.u64(f"element count of {what}")
            if etype in _SCALAR_FORMATS:
                size = _SCALAR_FORMATS[etype][1]
                if count * size > len(self.buf) - self.pos:
                    raise self.fail(f"{what}: array of {count} elements runs past the end of the file")
                raw = self.take(count * size, what)
                arr = np.frombuffer(raw, dtype=_NUMPY_DTYPES[etype]).copy()
                return GGUFValue(arr.astype(bool) if etype == 7 else arr, vtype, etype)
            if etype == _STRING:
                # each string costs at least its 8-byte length: bound the count before looping
                if count * 8 > len(self.buf) - self.pos:
                    raise self.fail(f"{what}: array of {count} strings runs past the end of the file")
                return GGUFValue([self.string(f"{what}[{i}]") for i in range(count)], vtype, etype)
            raise self.fail(f"{what}: unsupported array element type {etype}")
        raise self.fail(f"{what}: unknown value type {vtype}")


class GGUFFile:
    """An open GGUF file: validated metadata and memory-mapped tensors.

    Keep the object alive while tensor views are in use; `close()` drops the mmap.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFormatError(self.path, "no such file")
        size = self.path.stat().st_size
        if size < 24:
            raise ModelFormatError(self.path, f"not a GGUF file: only {size} bytes")
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(memoryview(self._mmap))
        except BaseException:
            self.close()
            raise

    def _parse(self, buf: memoryview) -> None:
        cur = _Cursor(self.path, buf)
        magic = bytes(cur.take(4, "magic"))
        if magic != GGUF_MAGIC:
            raise cur.fail(f"not a GGUF file: bad magic {magic!r} (expected b'GGUF')")
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            raise cur.fail(f"unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # every kv takes >= 13 bytes and every tensor info >= 28: refuse absurd counts up front
        if n_kv * 13 > len(buf) or n_tensors * 28 > len(buf):
            raise cur.fail(f"absurd counts: {n_kv} metadata entries and {n_tensors} tensors "
                           f"in a file of {len(buf)} bytes")

        self.metadata: dict[str, GGUFValue] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", limit=MAX_KEY_BYTES)
            if key in self.metadata:
                raise cur.fail(f"duplicate metadata key {key!r}")
            vtype = cur.u32(f"type of {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            self.alignment = int(self.get("general.alignment", int))
            if self.alignment <= 0 or self.alignment & (self.alignment - 1) or self.alignment > 1 << 20:
                raise cur.fail(f"general.alignment {self.alignment} is not a power of two <= 1 MiB")

        infos: list[tuple[str, GGMLQuantizationType, tuple[int, ...], int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}", limit=MAX_KEY_BYTES)
            if name in seen:
                raise cur.fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            n_dims = cur.u32(f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            shape = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
            raw_type = cur.u32(f"type of tensor {name!r}")
            offset = cur.u64(f"offset of tensor {name!r}")
            try:
                ggml_type = GGMLQuantizationType(raw_type)
            except ValueError:
                raise cur.fail(f"tensor {name!r} has unknown ggml type {raw_type}") from None
            infos.append((name, ggml_type, shape, offset))

        data_start = -(-cur.pos // self.alignment) * self.alignment
        self.data_offset = data_start
        data_size = len(buf) - data_start
        self.tensors: dict[str, GGUFTensor] = {}
        for name, ggml_type, shape, offset in infos:
            nbytes = self._tensor_nbytes(name, ggml_type, shape)
            if offset % self.alignment:
                raise cur.fail(f"tensor {name!r} offset {offset} is not aligned to {self.alignment}")
            if offset + nbytes > data_size:
                raise cur.fail(f"truncated data: tensor {name!r} needs bytes {offset}..{offset + nbytes} "
                               f"of the data section, which has {max(data_size, 0)} bytes")
            start = data_start + offset
            view = np.frombuffer(self._mmap, dtype=np.uint8, count=nbytes, offset=start)
            self.tensors[name] = GGUFTensor(name, ggml_type, shape, start, nbytes, view)

    def _tensor_nbytes(self, name: str, ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
        if any(d == 0 for d in shape) or any(d >= 1 << 40 for d in shape):
            raise ModelFormatError(self.path, f"tensor {name!r} has absurd shape {list(shape)}")
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        if shape[0] % block:
            raise ModelFormatError(self.path, f"tensor {name!r}: row length {shape[0]} is not a multiple "
                                              f"of the {ggml_type.name} block size {block}")
        n_rows = int(np.prod(shape[1:], dtype=object)) if len(shape) > 1 else 1
        nbytes = shape[0] // block * type_size * n_rows
        if nbytes > 1 << 48:
            raise ModelFormatError(self.path, f"tensor {name!r} has absurd size {nbytes} bytes")
        return int(nbytes)

    # ---- typed metadata access -------------------------------------------------------------

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        """The value of `key`, checked to be of `kind` (int, float, bool, str, list or np.ndarray).

        Missing keys return `default` when one is given; a wrong type is always an error.
        """
        if key not in self.metadata:
            if default is ...:
                raise ModelFormatError(self.path, f"missing metadata key {key!r}")
            return default
        entry = self.metadata[key]
        v = entry.value
        ok = {
            int: entry.type in (0, 1, 2, 3, 4, 5, 10, 11),
            float: entry.type in (6, 12, 0, 1, 2, 3, 4, 5, 10, 11),
            bool: entry.type == 7,
            str: entry.type == _STRING,
            list: entry.type == _ARRAY and entry.element_type == _STRING,
            np.ndarray: entry.type == _ARRAY and entry.element_type in _NUMPY_DTYPES,
        }.get(kind, False)
        if not ok:
            got = VALUE_TYPE_NAMES.get(entry.type, str(entry.type))
            if entry.type == _ARRAY:
                got += f" of {VALUE_TYPE_NAMES.get(entry.element_type or -1, entry.element_type)}"
            raise ModelFormatError(self.path, f"metadata {key!r} has type {got}, expected {kind.__name__}")
        return float(v) if kind is float else v

    def tensor(self, name: str) -> GGUFTensor:
        if name not in self.tensors:
            raise ModelFormatError(self.path, f"missing tensor {name!r}")
        return self.tensors[name]

    def close(self) -> None:
        self.tensors = {}
        try:
            self._mmap.close()
        except (BufferError, AttributeError):
            pass  # views still alive: the mapping goes when they do

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
