"""Host-to-device copies enqueued through the CUDA runtime directly (ctypes cudaMemcpyAsync).

Why: a decode step that streams experts to the GPU enqueues three copies per expert (gate,
up, down live in three GGUF tensors) between the router's sync and the CPU's ggml call, on
the thread that then runs that call. torch's `dst.copy_(src, non_blocking=True)` costs
~20 us of host time per copy there (dispatch, stream guard); the runtime's own call ~6 us
(H100 box, session 12: 3 copies of one Qwen3 expert 58.6 us through torch, ~19 us here).

The runtime is the one torch already loaded (found in /proc/self/maps), so no second CUDA
runtime enters the process. Where it cannot be found (not Linux, a static build), `load`
returns None and callers use torch's copy.
"""

from __future__ import annotations

import ctypes
from functools import cache

_HOST_TO_DEVICE = 1  # cudaMemcpyHostToDevice


class _Location(ctypes.Structure):  # cudaMemLocation
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _CopyAttributes(ctypes.Structure):  # cudaMemcpyAttributes (CUDA 12.8+)
    _fields_ = [("srcAccessOrder", ctypes.c_int), ("srcLocHint", _Location), ("dstLocHint", _Location),
                ("flags", ctypes.c_uint)]


_ACCESS_ORDER_STREAM = 1  # cudaMemcpySrcAccessOrderStream: the source is read in stream order


class RuntimeCopy:
    """cudaMemcpyAsync(dst, src, n, host-to-device, stream) of the loaded CUDA runtime, and its
    batched form where the runtime has one (cudaMemcpyBatchAsync, CUDA 12.8+: one call for all
    of a step's copies; its signature lost the failIdx argument in CUDA 13)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        fn = lib.cudaMemcpyAsync
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._fn = fn
        self._get_last_error = lib.cudaGetLastError
        version = ctypes.c_int(0)
        lib.cudaRuntimeGetVersion(ctypes.byref(version))
        self.version = version.value
        self._batch = None
        if self.version >= 12080 and hasattr(lib, "cudaMemcpyBatchAsync"):
            batch = lib.cudaMemcpyBatchAsync
            p = ctypes.c_void_p
            args = [p, p, p, ctypes.c_size_t, p, p, ctypes.c_size_t]
            batch.argtypes = args + ([p] if self.version >= 13000 else [p, p])  # (failIdx,) stream
            batch.restype = ctypes.c_int
            self._batch = batch
            self._attrs = _CopyAttributes(_ACCESS_ORDER_STREAM, _Location(0, 0), _Location(0, 0), 0)
            self._attr_index = (ctypes.c_size_t * 1)(0)
            self._fail = ctypes.c_size_t(0)

    def _clear_error(self) -> None:
        self._get_last_error()

    def h2d_many(self, dsts: list[int], srcs: list[int], sizes: list[int], stream: int) -> None:
        """`h2d` of each (dst, src, size), in one runtime call where the runtime batches copies."""
        if self._batch is None or len(dsts) < 2:
            for d, s, n in zip(dsts, srcs, sizes):
                self.h2d(d, s, n, stream)
            return
        count = len(dsts)
        d = (ctypes.c_void_p * count)(*dsts)
        s = (ctypes.c_void_p * count)(*srcs)
        n = (ctypes.c_size_t * count)(*sizes)
        common = (d, s, n, count, ctypes.byref(self._attrs), self._attr_index, 1)
        if self.version >= 13000:
            status = self._batch(*common, stream)
        else:
            status = self._batch(*common, ctypes.byref(self._fail), stream)
        if status != 0:  # (an older driver may not take it: copy one by one from now on)
            self._clear_error()  # or torch's next launch check would report this call's error
            self._batch = None
            for d_, s_, n_ in zip(dsts, srcs, sizes):
                self.h2d(d_, s_, n_, stream)

    def h2d(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Enqueue a copy of nbytes from host address src to device address dst on `stream`
        (a cudaStream_t as an int: torch's Stream.cuda_stream). Asynchronous only from
        page-locked memory."""
        status = self._fn(dst, src, nbytes, _HOST_TO_DEVICE, stream)
        if status != 0:
            raise RuntimeError(f"cudaMemcpyAsync failed with CUDA error {status} ({nbytes} bytes)")


@cache
def load() -> RuntimeCopy | None:
    """The copy function of the CUDA runtime torch loaded, or None (call after CUDA is initialized)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart" in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return RuntimeCopy(ctypes.CDLL(path))
        except (OSError, AttributeError):
            continue
    return None
