"""ctypes binding to the ggml libraries that llama-cpp-python installs.

Exactly one copy of libggml lives in the process: we import `llama_cpp` (which
loads libllama and, through it, libggml-base / libggml-cpu / libggml from
`llama_cpp/lib/`) and then open those same files by path, which makes the
dynamic loader hand back the already-mapped libraries. We never import
`llama_cpp._ggml`, which would map a second copy.

Every function is bound through `ctypes.CDLL`, which releases the GIL for the
duration of each call: `ggml_graph_compute` runs while other Python threads
(the GPU side of the executor) keep going.

At first use the binding checks the ABI it was written against: ggml's version,
`ggml_tensor_overhead()` (= sizeof(struct ggml_object) + sizeof(struct
ggml_tensor)), and, by probing the live library, the field offsets of the
structs we read or write (ggml_tensor, ggml_init_params, ggml_cplan,
ggml_threadpool_params). A mismatch raises GgmlLibraryError before any graph
is built, never a crash later.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from ctypes import POINTER, c_bool, c_char, c_char_p, c_int, c_int32, c_int64, c_size_t, c_uint32, c_void_p
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edge_moe.errors import GgmlLibraryError

# The ggml this binding was written against (llama-cpp-python 0.3.36 ships ggml 0.25.3).
EXPECTED_GGML_VERSION_PREFIX = "0."
# sizeof(struct ggml_object) = 32 on 64-bit: size_t offs, size; ggml_object * next; enum type; char padding[4]
GGML_OBJECT_SIZE = 32
# ggml_tensor_overhead() = sizeof(struct ggml_object) + sizeof(struct ggml_tensor) = 32 + 336
EXPECTED_TENSOR_OVERHEAD = 368

# ggml.h limits that size the structs below.
GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_MAX_N_THREADS = 512
GGML_TYPE_I32 = 26  # enum ggml_type (gguf's GGMLQuantizationType has no I32 member)


# ---- structs (ggml.h / ggml-cpu.h, ggml 0.25.3) -------------------------------------------------

class GgmlInitParams(ctypes.Structure):
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor; we read `ne`/`data`/`name`/`op` and write `src` (graph rebinding)."""

    _fields_ = [
        ("type", c_int),
        ("buffer", c_void_p),
        ("ne", c_int64 * GGML_MAX_DIMS),
        ("nb", c_size_t * GGML_MAX_DIMS),
        ("op", c_int),
        ("op_params", c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", c_int32),
        ("src", c_void_p * GGML_MAX_SRC),
        ("view_src", c_void_p),
        ("view_offs", c_size_t),
        ("data", c_void_p),
        ("name", c_char * GGML_MAX_NAME),
        ("extra", c_void_p),
        ("padding", c_char * 8),
    ]


class GgmlCplan(ctypes.Structure):
    _fields_ = [
        ("work_size", c_size_t),
        ("work_data", c_void_p),
        ("n_threads", c_int),
        ("threadpool", c_void_p),
        ("abort_callback", c_void_p),
        ("abort_callback_data", c_void_p),
        ("use_ref", c_bool),
    ]


class GgmlThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", c_bool * GGML_MAX_N_THREADS),
        ("n_threads", c_int),
        ("prio", c_int),
        ("poll", c_uint32),
        ("strict_cpu", c_bool),
        ("paused", c_bool),
    ]


def tensor_struct(ptr: int) -> GgmlTensor:
    """A ctypes view of the ggml_tensor at `ptr` (reads and writes go to ggml's memory)."""
    return GgmlTensor.from_address(ptr)


@dataclass(frozen=True)
class GgmlLibs:
    base: ctypes.CDLL  # libggml-base: tensors, graphs, allocators, backend buffers, quantization
    cpu: ctypes.CDLL  # libggml-cpu: the CPU compute kernels and thread pool
    lib_dir: Path


def _lib_path(lib_dir: Path, stem: str) -> Path:
    for name in (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise GgmlLibraryError(f"{lib_dir}: lib{stem} not found; reinstall llama-cpp-python==0.3.36 "
                           "(built without GGML_BACKEND_DL, which moves the CPU backend out of the package)")


@functools.cache
def load_ggml() -> GgmlLibs:
    """The process-wide ggml libraries, loaded once and checked."""
    try:
        import llama_cpp  # noqa: F401  (maps libllama and its ggml dependencies)
    except ImportError as e:
        raise GgmlLibraryError(f"llama-cpp-python is not installed or failed to load: {e}") from None
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    mode = getattr(ctypes, "RTLD_GLOBAL", 0)
    base = ctypes.CDLL(str(_lib_path(lib_dir, "ggml-base")), mode=mode)
    cpu = ctypes.CDLL(str(_lib_path(lib_dir, "ggml-cpu")), mode=mode)
    libs = GgmlLibs(base, cpu, lib_dir)
    _declare(libs)
    check_abi(libs)
    libs.cpu.ggml_cpu_init()  # fp16 tables and CPU feature detection, before any plan or compute
    libs.base.ggml_log_set(_LOG_FILTER, None)
    return libs


# ---- declarations ---------------------------------------------------------------------------

GgmlLogCallback = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)  # (level, text, user data)
_p = c_void_p  # every ggml object (context, tensor, graph, buffer, threadpool) is an opaque pointer here

# name -> (restype, argtypes), per library
_BASE_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ggml_version": (c_char_p, []),
    "ggml_log_set": (None, [GgmlLogCallback, c_void_p]),
    "ggml_tensor_overhead": (c_size_t, []),
    "ggml_row_size": (c_size_t, [c_int, c_int64]),
    "ggml_type_name": (c_char_p, [c_int]),
    "ggml_op_name": (c_char_p, [c_int]),
    "ggml_quantize_requires_imatrix": (c_bool, [c_int]),
    "ggml_quantize_chunk": (c_size_t, [c_int, _p, _p, c_int64, c_int64, c_int64, _p]),
    # contexts and tensors
    "ggml_init": (_p, [GgmlInitParams]),
    "ggml_free": (None, [_p]),
    "ggml_used_mem": (c_size_t, [_p]),
    "ggml_new_tensor_1d": (_p, [_p, c_int, c_int64]),
    "ggml_new_tensor_2d": (_p, [_p, c_int, c_int64, c_int64]),
    "ggml_new_tensor_3d": (_p, [_p, c_int, c_int64, c_int64, c_int64]),
    "ggml_get_data": (_p, [_p]),
    "ggml_nbytes": (c_size_t, [_p]),
    "ggml_set_name": (_p, [_p, c_char_p]),
    "ggml_set_input": (None, [_p]),
    "ggml_set_output": (None, [_p]),
    # ops
    "ggml_add": (_p, [_p, _p, _p]),
    "ggml_mul": (_p, [_p, _p, _p]),
    "ggml_mul_mat": (_p, [_p, _p, _p]),
    "ggml_mul_mat_id": (_p, [_p, _p, _p, _p]),
    "ggml_out_prod": (_p, [_p, _p, _p]),
    "ggml_sigmoid": (_p, [_p, _p]),
    "ggml_glu_split": (_p, [_p, _p, _p, c_int]),
    "ggml_reshape_2d": (_p, [_p, _p, c_int64, c_int64]),
    "ggml_reshape_3d": (_p, [_p, _p, c_int64, c_int64, c_int64]),
    # graphs
    "ggml_graph_overhead_custom": (c_size_t, [c_size_t, c_bool]),
    "ggml_new_graph_custom": (_p, [_p, c_size_t, c_bool]),
    "ggml_build_forward_expand": (None, [_p, _p]),
    "ggml_graph_n_nodes": (c_int, [_p]),
    # graph allocator: one buffer for all intermediate tensors of a graph, reused in place
    "ggml_gallocr_new": (_p, [_p]),
    "ggml_gallocr_free": (None, [_p]),
    "ggml_gallocr_alloc_graph": (c_bool, [_p, _p]),
    "ggml_gallocr_get_buffer_size": (c_size_t, [_p, c_int]),
    # backend buffers (the CPU_REPACK extra buffer type)
    "ggml_backend_cpu_buffer_type": (_p, []),
    "ggml_backend_buft_name": (c_char_p, [_p]),
    "ggml_backend_buft_alloc_buffer": (_p, [_p, c_size_t]),
    "ggml_backend_buffer_free": (None, [_p]),
    "ggml_backend_buffer_get_base": (_p, [_p]),
    "ggml_backend_tensor_alloc": (c_int, [_p, _p, _p]),
    "ggml_backend_tensor_set": (None, [_p, _p, c_size_t, c_size_t]),
    "ggml_backend_reg_dev_get": (_p, [_p, c_size_t]),
    "ggml_backend_reg_get_proc_address": (_p, [_p, c_char_p]),
    # thread pool parameters (the pool itself lives in libggml-cpu)
    "ggml_threadpool_params_init": (None, [POINTER(GgmlThreadpoolParams), c_int]),
}

_CPU_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ggml_cpu_init": (None, []),
    "ggml_cpu_has_avx2": (c_int, []),
    "ggml_cpu_has_avx512": (c_int, []),
    "ggml_threadpool_new": (_p, [POINTER(GgmlThreadpoolParams)]),
    "ggml_threadpool_free": (None, [_p]),
    "ggml_graph_plan": (GgmlCplan, [_p, c_int, _p]),
    "ggml_graph_compute": (c_int, [_p, POINTER(GgmlCplan)]),
    "ggml_backend_cpu_reg": (_p, []),
}


def _declare(libs: GgmlLibs) -> None:
    for lib, table in ((libs.base, _BASE_SIGNATURES), (libs.cpu, _CPU_SIGNATURES)):
        for name, (restype, argtypes) in table.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise GgmlLibraryError(f"{libs.lib_dir}: {lib._name} has no symbol {name}; "
                                       "edge-moe needs llama-cpp-python==0.3.36") from None
            fn.restype = restype
            fn.argtypes = argtypes


# ---- ABI check ------------------------------------------------------------------------------

def check_abi(libs: GgmlLibs) -> None:
    """Raise GgmlLibraryError unless the library matches the structs declared above."""
    version = (libs.base.ggml_version() or b"").decode()
    overhead = libs.base.ggml_tensor_overhead()
    if (not version.startswith(EXPECTED_GGML_VERSION_PREFIX) or overhead != EXPECTED_TENSOR_OVERHEAD
            or GGML_OBJECT_SIZE + ctypes.sizeof(GgmlTensor) != EXPECTED_TENSOR_OVERHEAD):
        raise GgmlLibraryError(
            f"{libs.lib_dir}: ggml ABI mismatch: version {version!r}, ggml_tensor_overhead() = {overhead}, "
            f"binding's struct ggml_tensor = {ctypes.sizeof(GgmlTensor)} bytes; this edge-moe expects "
            f"ggml {EXPECTED_GGML_VERSION_PREFIX}x with overhead {EXPECTED_TENSOR_OVERHEAD} "
            "(llama-cpp-python==0.3.36)")
    problems = _probe_tensor_layout(libs) + _probe_threadpool_params(libs)
    if problems:
        raise GgmlLibraryError(f"{libs.lib_dir}: ggml {version} struct layout differs from this binding: "
                               + "; ".join(problems) + " (edge-moe needs llama-cpp-python==0.3.36)")


def _probe_tensor_layout(libs: GgmlLibs) -> list[str]:
    """Build and run a tiny graph, checking each field we use against ggml's own accessors."""
    b, problems = libs.base, []
    ctx = b.ggml_init(GgmlInitParams(1 << 16, None, False))
    if not ctx:
        return ["ggml_init(ggml_init_params) returned NULL"]
    try:
        a_ptr = b.ggml_new_tensor_2d(ctx, int(GGMLQuantizationType.F32), 3, 5)
        c_ptr = b.ggml_add(ctx, a_ptr, a_ptr)
        b.ggml_set_name(a_ptr, b"edge_moe_probe")
        a, c = tensor_struct(a_ptr), tensor_struct(c_ptr)
        if list(a.ne) != [3, 5, 1, 1] or list(a.nb) != [4, 12, 60, 60]:
            problems.append(f"ggml_tensor.ne/nb read {list(a.ne)}/{list(a.nb)}")
        if a.data != b.ggml_get_data(a_ptr) or not a.data:
            problems.append("ggml_tensor.data is not where ggml_get_data() finds it")
        if a.name != b"edge_moe_probe":
            problems.append(f"ggml_tensor.name read {a.name!r}")
        if c.src[0] != a_ptr or c.src[1] != a_ptr or b.ggml_op_name(c.op) != b"ADD":
            problems.append("ggml_tensor.op/src are not where ggml_add() put them")
        # a graph through ggml_graph_plan / ggml_graph_compute checks ggml_cplan too
        gf = b.ggml_new_graph_custom(ctx, 8, False)
        b.ggml_build_forward_expand(gf, c_ptr)
        plan = libs.cpu.ggml_graph_plan(gf, 1, None)
        if plan.n_threads != 1 or plan.threadpool or plan.use_ref or plan.work_size > (1 << 20):
            problems.append(f"ggml_cplan read n_threads={plan.n_threads}, work_size={plan.work_size}")
            return problems
        src = np.arange(15, dtype=np.float32)
        ctypes.memmove(a.data, src.ctypes.data, src.nbytes)
        status = libs.cpu.ggml_graph_compute(gf, ctypes.byref(plan))
        got = np.ctypeslib.as_array(ctypes.cast(c.data, POINTER(ctypes.c_float)), (15,))
        if status != 0 or not np.array_equal(got, 2 * src):
            problems.append(f"a probe graph (a + a) computed status {status}, values {got[:3]}...")
    finally:
        b.ggml_free(ctx)
    return problems


def _probe_threadpool_params(libs: GgmlLibs) -> list[str]:
    params = GgmlThreadpoolParams()
    ctypes.memset(ctypes.byref(params), 0xAB, ctypes.sizeof(params))
    libs.base.ggml_threadpool_params_init(ctypes.byref(params), 3)
    fields = (params.n_threads, params.prio, params.poll, bool(params.strict_cpu), bool(params.paused))
    if fields != (3, 0, 50, False, False) or any(params.cpumask):
        return [f"ggml_threadpool_params read (n_threads, prio, poll, strict_cpu, paused) = {fields}"]
    return []


def ggml_version() -> str:
    return load_ggml().base.ggml_version().decode()


# ---- CPU extra buffer types (weights repacked for the CPU kernels) ---------------------------

def cpu_extra_buffer_types() -> dict[str, int]:
    """The CPU backend's extra buffer types by name (e.g. "CPU_REPACK", "AMX"), as buft pointers."""
    libs = load_ggml()
    reg = libs.cpu.ggml_backend_cpu_reg()
    fn_ptr = libs.base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn_ptr:
        return {}
    get_extra_bufts = ctypes.CFUNCTYPE(POINTER(c_void_p), c_void_p)(fn_ptr)
    bufts = get_extra_bufts(libs.base.ggml_backend_reg_dev_get(reg, 0))
    found: dict[str, int] = {}
    i = 0
    while bufts[i]:
        found[libs.base.ggml_backend_buft_name(bufts[i]).decode()] = bufts[i]
        i += 1
    return found


# ---- ggml's log -------------------------------------------------------------------------------

_GGML_LOG_WARN, _GGML_LOG_CONT = 3, 5  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_log_shown = [False]  # whether the last message was shown (a CONT line continues it)


@GgmlLogCallback
def _LOG_FILTER(level: int, text: bytes, _user: int) -> None:
    """ggml's messages to stderr from WARN up: its DEBUG lines (one per repacked tensor, ...)
    would bury the user's terminal."""
    show = _log_shown[0] if level == _GGML_LOG_CONT else level >= _GGML_LOG_WARN
    _log_shown[0] = show
    if show and text:
        sys.stderr.write(text.decode(errors="replace"))


# ---- quantization (used by the converter) ---------------------------------------------------

def row_bytes(ggml_type: GGMLQuantizationType, n_per_row: int) -> int:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    if n_per_row % block:
        raise ValueError(f"row length {n_per_row} is not a multiple of the {ggml_type.name} block size {block}")
    return n_per_row // block * type_size


def quantize_rows(rows: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Quantize float32 rows `[n_rows, n_per_row]` with ggml's own quantizer.

    Returns uint8 `[n_rows, row_bytes]`, byte-identical to what llama.cpp's
    `llama-quantize` writes for the same rows (no importance matrix).
    """
    if rows.ndim != 2:
        raise ValueError(f"quantize_rows takes a 2-D array, got shape {rows.shape}")
    n_rows, n_per_row = rows.shape
    out = np.empty((n_rows, row_bytes(ggml_type, n_per_row)), dtype=np.uint8)
    lib = load_ggml().base
    if lib.ggml_quantize_requires_imatrix(int(ggml_type)):
        raise ValueError(f"{ggml_type.name} needs an importance matrix, which the converter does not compute")
    src = np.ascontiguousarray(rows, dtype=np.float32)
    written = lib.ggml_quantize_chunk(int(ggml_type), src.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, None)
    if written != out.nbytes:
        raise GgmlLibraryError(f"ggml_quantize_chunk wrote {written} bytes for {ggml_type.name} "
                               f"{list(rows.shape)}, expected {out.nbytes}")
    return out
