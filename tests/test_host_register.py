"""Page-locking the GGUF's expert bytes (edge_moe/host_register.py): the page ranges, the
RAM rule, and on a GPU a real registration of a read-only file map, copied from with DMA."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_moe.host_register import MAX_LOCKED_RAM_FRACTION, RegisteredExperts, _page_ranges, register_bytes_allowed

PAGE = mmap.PAGESIZE


def test_page_ranges_cover_whole_pages_and_merge_neighbours() -> None:
    buf = np.zeros(10 * PAGE, dtype=np.uint8)
    base = buf.ctypes.data
    first = (base + PAGE - 1) // PAGE * PAGE - base  # offset of the first page boundary in buf
    a = buf[first + 10:first + 20]  # inside one page
    b = buf[first + PAGE - 5:first + PAGE + 5]  # across the next boundary: touches a's page
    c = buf[first + 5 * PAGE + 1:first + 6 * PAGE + 1]  # two pages, apart from the others
    got = _page_ranges([c, a, b, buf[:0]])
    lo = base + first
    assert got == [(lo, lo + 2 * PAGE), (lo + 5 * PAGE, lo + 7 * PAGE)]
    for arr in (a, b, c):  # every byte is inside a range
        assert any(s <= arr.ctypes.data and arr.ctypes.data + arr.nbytes <= e for s, e in got)


def test_ram_rule_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_MOE_HOST_REGISTER", raising=False)
    ram = 32 << 30
    assert register_bytes_allowed(int(MAX_LOCKED_RAM_FRACTION * ram), ram)
    assert not register_bytes_allowed(int(MAX_LOCKED_RAM_FRACTION * ram) + 1, ram)
    monkeypatch.setenv("EDGE_MOE_HOST_REGISTER", "0")
    assert not register_bytes_allowed(1, ram)
    monkeypatch.setenv("EDGE_MOE_HOST_REGISTER", "1")
    assert register_bytes_allowed(ram, ram)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_registered_read_only_map_is_pinned_and_copies_exactly(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 3 * PAGE + 123, dtype=np.uint8)
    path = tmp_path / "blob.bin"
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    whole = np.frombuffer(mm, dtype=np.uint8)
    parts = [whole[7:PAGE + 9], whole[PAGE + 9:3 * PAGE + 100]]  # touching, not page aligned
    reg = RegisteredExperts(parts)
    assert reg.nbytes == 4 * PAGE  # one merged range of whole pages
    dev = torch.empty(sum(p.nbytes for p in parts), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        o = 0
        for v in reg.views:
            assert v.is_pinned()
            dev[o:o + v.numel()].copy_(v, non_blocking=True)
            o += v.numel()
    stream.synchronize()
    assert np.array_equal(dev.cpu().numpy(), data[7:3 * PAGE + 100])
    reg.close()
    reg.close()  # idempotent
    reg2 = RegisteredExperts(parts)  # the pages were unregistered: registering again works
    reg2.close()
