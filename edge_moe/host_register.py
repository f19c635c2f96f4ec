"""Page-locking the GGUF's expert bytes in place, so fills and prefill streams DMA straight
from the page cache (`RegisteredExperts`).

Why: the GGUF's memory map is pageable, so a fill first copies each expert into pinned
staging memory on host threads (edge_moe/gpu_slots.py). Measured on the H100 box (session
11, Qwen3 at 12 GiB, 512-token prefill): the 2176 streamed experts' DMAs took 119 ms of copy
engine time (~48 GB/s), but the staging jobs took 0.7-0.8 s of host time (~8 GB/s while
ggml's threads share the cores), and the streamed layers ~45-60 ms each instead of ~7.
`cudaHostRegister` page-locks the mapped file pages where they are; a copy from them is a
plain asynchronous DMA and costs the host nothing but the launch.

What it costs: the registered pages stay in RAM (they cannot be paged out) until `close`.
The CPU experts read those same pages on every decode step anyway; the rule in
`register_bytes_allowed` keeps the locked share of RAM bounded. The mapping is read-only,
so ranges are registered with cudaHostRegisterReadOnly (the GPU only reads them).

Ranges are widened to whole pages (the driver locks pages) and overlapping or touching
ranges are merged first: registering one page twice is an error.
"""

from __future__ import annotations

import mmap
import os
import warnings
import weakref
from collections.abc import Sequence

import numpy as np
import torch

# cudaHostRegisterPortable | cudaHostRegisterReadOnly (CUDA runtime API flag values)
_REGISTER_FLAGS = 0x01 | 0x08
# At most this share of physical RAM is page-locked for experts (the rest stays for the OS,
# the dense weights, the KV cache and the user's other programs).
MAX_LOCKED_RAM_FRACTION = 0.5


def register_bytes_allowed(nbytes: int, ram_total: int | None = None) -> bool:
    """Whether `nbytes` of expert bytes may be page-locked on this machine. EDGE_MOE_HOST_REGISTER
    = 0 / 1 forces the answer (A/B runs)."""
    forced = os.environ.get("EDGE_MOE_HOST_REGISTER")
    if forced in ("0", "1"):
        return forced == "1"
    if ram_total is None:
        import psutil

        ram_total = psutil.virtual_memory().total
    return nbytes <= MAX_LOCKED_RAM_FRACTION * ram_total


def _page_ranges(arrays: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """Merged [start, end) address ranges, whole pages, covering every array's bytes."""
    page = mmap.PAGESIZE
    spans = sorted((a.ctypes.data // page * page, -(-(a.ctypes.data + a.nbytes) // page) * page)
                   for a in arrays if a.nbytes)
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _unregister(cudart: object, starts: list[int]) -> None:
    for ptr in starts:
        cudart.cudaHostUnregister(ptr)  # type: ignore[attr-defined]
    starts.clear()


class RegisteredExperts:
    """Page-locks the bytes of `arrays` (views of one read-only memory map that must outlive
    this object, or its `close`) and gives each one as a pinned uint8 torch view (`views`):
    copies from them to the GPU with non_blocking=True are direct DMAs.

    Raises RuntimeError (nothing left registered) when the driver refuses a range."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        cudart = torch.cuda.cudart()
        self._starts: list[int] = []
        self.nbytes = 0
        for lo, hi in _page_ranges(arrays):
            err = cudart.cudaHostRegister(lo, hi - lo, _REGISTER_FLAGS)
            if int(err) != 0:
                _unregister(cudart, self._starts)
                raise RuntimeError(f"cudaHostRegister of {(hi - lo) / 2**20:.0f} MiB of the model's memory map "
                                   f"failed: {err}")
            self._starts.append(lo)
            self.nbytes += hi - lo
        # dropped without close(): still unregistered (before the map goes, if the owner closes in order)
        self._finalizer = weakref.finalize(self, _unregister, cudart, self._starts)
        with warnings.catch_warnings():  # read-only arrays: torch warns, but the views are only read
            warnings.simplefilter("ignore", UserWarning)
            self.views = [torch.from_numpy(a.reshape(-1).view(np.uint8)) for a in arrays]

    def close(self) -> None:
        """Unlock the pages (call after every copy from them finished). Idempotent."""
        self.views = []
        self._finalizer()
