"""Writing a GGUF whose tensor data is streamed, atomically.

gguf-py's GGUFWriter writes the header, metadata and tensor infos (all sizes are known up
front); the caller then streams each tensor's bytes into the file this context manager
yields. The output goes to `OUT.partial`, is fsynced and renamed to OUT only when the body
completes: an error or Ctrl-C removes it, so nothing that looks like a model is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from gguf import GGUFWriter


@contextmanager
def atomic_gguf(writer: GGUFWriter, out: Path) -> Iterator[BinaryIO]:
    """Yield the open file positioned after the tensor infos; rename to `out` on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout = writer.fout[0]
        yield fout
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        os.replace(partial, out)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
