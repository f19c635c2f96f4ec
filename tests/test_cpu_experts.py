"""The CPU expert path (edge_moe/cpu_experts.py) against a numpy reference.

The reference dequantizes the very bytes ggml reads (gguf.quants.dequantize) and computes
sum_j w[t, j] * down_e(act(gate_e x) * up_e x) in float64. ggml differs from it in one
documented way: for quantized weights it quantizes the activations (the matmul's right-hand
side) to its `vec_dot_type` before the dot products -- Q8_0/Q8_1 (8-bit, blocks of 32) for
Q4_0..Q8_0, Q8_K (8-bit, blocks of 256) for the K-quants -- and F16 / BF16 rounds them to
16 bits. Two matmuls in series (x into gate/up, act into down) each add that rounding, so we
allow, per type, about 3x the worst relative error (||y - ref|| / ||ref|| per token) seen
over several seeds: F32 2e-7, F16 5e-4, BF16 3.5e-3, Q8_0-family 1.4e-2, Q8_K-family 2.4e-2.
`test_activation_quantization_explains_the_gap` then shows that emulating the Q8_0 rounding
in the reference closes the gap to float noise.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize

from edge_moe import ggml_lib
from edge_moe.cpu_experts import CpuExpertConfig, CpuExpertEngine, LayerTensors
from edge_moe.errors import GgmlLibraryError
from edge_moe.expert_weights import (
    Activation, ExpertWeights, SharedExpert, WeightTensor, expert_weights_from_gguf,
)
from edge_moe.gguf_file import GGUFFile
from edge_moe.ggml_lib import quantize_rows

N_EMBD, N_FF, N_EXPERT, TOP_K, N_FF_SHEXP = 256, 512, 8, 2, 768  # multiples of 256: K-quants work

TOLERANCE = {
    Q.F32: 1e-5, Q.F16: 2e-3, Q.BF16: 1.5e-2,
    Q.Q8_0: 4e-2, Q.Q4_0: 4e-2, Q.Q4_1: 4e-2, Q.Q5_0: 4e-2, Q.Q5_1: 4e-2,
    Q.Q2_K: 7e-2, Q.Q3_K: 7e-2, Q.Q4_K: 7e-2, Q.Q5_K: 7e-2, Q.Q6_K: 7e-2,
}


# ---- random layers and the float64 reference ------------------------------------------------

@dataclass
class DenseLayer:
    """The dequantized weights in numpy order: gate[e] @ x is expert e's gate projection."""

    gate: np.ndarray  # [n_expert, n_ff, n_embd]
    up: np.ndarray  # [n_expert, n_ff, n_embd]
    down: np.ndarray  # [n_expert, n_embd, n_ff]
    shexp: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None  # gate, up, down, gate_inp


def random_tensor(rng: np.random.Generator, ggml_type: Q, shape: tuple[int, ...]) -> tuple[WeightTensor, np.ndarray]:
    """A ggml-quantized random tensor of ggml shape `shape` and its dequantized float64 twin."""
    rows = rng.standard_normal((int(np.prod(shape[1:])), shape[0]), dtype=np.float32) / np.sqrt(shape[0])
    raw = quantize_rows(rows, ggml_type).reshape(-1)
    dense = dequantize(raw, ggml_type).astype(np.float64).reshape(tuple(reversed(shape)))
    return WeightTensor(raw, ggml_type, shape), dense


@functools.cache
def make_layer(ggml_type: Q, shared: bool = False, seed: int = 0,
               activation: Activation = Activation.SILU) -> tuple[ExpertWeights, DenseLayer]:
    rng = np.random.default_rng(seed)
    (g, gd), (u, ud) = (random_tensor(rng, ggml_type, (N_EMBD, N_FF, N_EXPERT)) for _ in range(2))
    d, dd = random_tensor(rng, ggml_type, (N_FF, N_EMBD, N_EXPERT))
    shexp = dense_shexp = None
    if shared:
        (sg, sgd), (su, sud) = (random_tensor(rng, ggml_type, (N_EMBD, N_FF_SHEXP)) for _ in range(2))
        sd, sdd = random_tensor(rng, ggml_type, (N_FF_SHEXP, N_EMBD))
        gi, gid = random_tensor(rng, Q.F32, (N_EMBD,))
        shexp, dense_shexp = SharedExpert(sg, su, sd, gi), (sgd, sud, sdd, gid)
    return ExpertWeights(g, u, d, shexp, activation), DenseLayer(gd, ud, dd, dense_shexp)


def act_fn(activation: Activation, a: np.ndarray) -> np.ndarray:
    if activation is Activation.SILU:
        return a / (1.0 + np.exp(-a))
    return 0.5 * a * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (a + 0.044715 * a**3)))  # GELU_TANH


def reference(dense: DenseLayer, x: np.ndarray, ids: np.ndarray, w: np.ndarray,
              activation: Activation = Activation.SILU) -> np.ndarray:
    x = x.astype(np.float64)
    y = np.zeros_like(x)  # [T, n_embd]
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            h = act_fn(activation, dense.gate[e] @ x[t]) * (dense.up[e] @ x[t])  # [n_ff]
            y[t] += w[t, j] * (dense.down[e] @ h)
        if dense.shexp is not None:
            sg, su, sd, gi = dense.shexp
            shared = sd @ (act_fn(activation, sg @ x[t]) * (su @ x[t]))
            y[t] += shared / (1.0 + np.exp(-(gi @ x[t]))) if gi is not None else shared
    return y


def routing(n_tokens: int, seed: int = 1, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, N_EMBD), dtype=np.float32)
    ids = np.stack([rng.choice(N_EXPERT, k, replace=False) for _ in range(n_tokens)]).astype(np.int32)
    w = rng.random((n_tokens, k), dtype=np.float32)
    return x, ids, w


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    """Worst per-token ||y - ref|| / ||ref||."""
    return float((np.linalg.norm(y - ref, axis=1) / np.linalg.norm(ref, axis=1)).max())


@pytest.fixture(scope="module")
def engine() -> CpuExpertEngine:
    with CpuExpertEngine(CpuExpertConfig(n_threads=1)) as eng:
        yield eng


@functools.cache
def prepared(eng: CpuExpertEngine, *layer_key: object) -> LayerTensors:
    return eng.prepare(make_layer(*layer_key)[0])


# ---- numerics -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["mixed", "uniform", "none_missed", "one_token"])
def test_forward_misses_computes_exactly_the_missed_pairs(engine: CpuExpertEngine, case: str) -> None:
    """The GPU's pairs are dropped (tokens grouped by miss count, one call each), and the sum
    over the remaining pairs matches the reference with the GPU pairs' weights zeroed."""
    from edge_moe.cpu_experts import forward_misses

    n = 1 if case == "one_token" else 9
    x, ids, w = routing(n, seed=5)
    rng = np.random.default_rng(6)
    on_gpu = {"mixed": rng.random(ids.shape) < 0.5, "uniform": np.arange(TOP_K)[None, :].repeat(n, 0) == 0,
              "none_missed": np.ones(ids.shape, bool), "one_token": np.array([[True, False]])}[case]
    if case == "mixed":
        on_gpu[0] = True  # a token with no miss beside tokens with 1 and 2
    layer_key = (Q.Q8_0, False)
    out = np.full((n, N_EMBD), 7.0, np.float32)  # stale contents must not survive
    calls: list[tuple[int, int]] = []
    real = engine.forward

    def counting(layer: LayerTensors, x: np.ndarray, i: np.ndarray, ww: np.ndarray, out: object = None) -> np.ndarray:
        calls.append(i.shape)
        return real(layer, x, i, ww, out=out)

    engine.forward = counting  # type: ignore[method-assign]
    try:
        y = forward_misses(engine, prepared(engine, *layer_key), x, ids, w, on_gpu, out=out)
    finally:
        del engine.forward
    assert y is out
    ref = reference(make_layer(*layer_key)[1], x, ids, np.where(on_gpu, 0.0, w).astype(np.float32))
    assert np.abs(y - ref).max() <= TOLERANCE[Q.Q8_0] * np.abs(ref).max() + 1e-6
    assert sum(a * b for a, b in calls) == int((~on_gpu).sum())  # no GPU pair computed on the CPU
    if case == "none_missed":
        assert calls == [] and not y.any()


@pytest.mark.parametrize("n_tokens", [1, 7])
@pytest.mark.parametrize("shared", [False, True], ids=["routed", "with_shared_expert"])
@pytest.mark.parametrize("ggml_type", list(TOLERANCE), ids=lambda t: t.name)
def test_matches_reference(engine: CpuExpertEngine, ggml_type: Q, shared: bool, n_tokens: int) -> None:
    x, ids, w = routing(n_tokens)
    y = engine.forward(prepared(engine, ggml_type, shared), x, ids, w)
    assert y.shape == (n_tokens, N_EMBD) and y.dtype == np.float32
    assert rel_error(y, reference(make_layer(ggml_type, shared)[1], x, ids, w)) < TOLERANCE[ggml_type]


@pytest.mark.parametrize("ggml_type", [Q.Q8_0, Q.Q4_0], ids=lambda t: t.name)
def test_activation_quantization_explains_the_gap(engine: CpuExpertEngine, ggml_type: Q) -> None:
    """Rounding x and act through ggml's own Q8_0 quantizer in the reference leaves float noise only."""
    def q8_0(v: np.ndarray) -> np.ndarray:
        return dequantize(quantize_rows(v[None].astype(np.float32), Q.Q8_0).reshape(-1), Q.Q8_0).astype(np.float64)

    weights, dense = make_layer(ggml_type)
    x, ids, w = routing(7)
    ref = np.zeros((7, N_EMBD))
    for t in range(7):
        xq = q8_0(x[t])
        for j in range(TOP_K):
            e = ids[t, j]
            h = (act_fn(Activation.SILU, dense.gate[e] @ xq) * (dense.up[e] @ xq)).astype(np.float32)
            ref[t] += w[t, j] * (dense.down[e] @ q8_0(h))
    assert rel_error(engine.forward(prepared(engine, ggml_type), x, ids, w), ref) < 2e-3


def test_gelu_activation(engine: CpuExpertEngine) -> None:
    x, ids, w = routing(3)
    weights, dense = make_layer(Q.F32, False, 0, Activation.GELU_TANH)
    y = engine.forward(engine.prepare(weights), x, ids, w)
    # ggml's CPU gelu reads a 64K-entry fp16 table (GGML_GELU_FP16): ~3.5e-4 even on F32 weights
    assert rel_error(y, reference(dense, x, ids, w, Activation.GELU_TANH)) < 1.5e-3


def test_repeated_expert_ids_across_and_within_tokens(engine: CpuExpertEngine) -> None:
    x, _, _ = routing(16)
    ids = np.tile(np.array([[3, 5]], np.int32), (16, 1))
    ids[::4] = [[6, 6]]  # the same expert twice in one token's top-k
    w = np.random.default_rng(2).random((16, 2), dtype=np.float32)
    layer = prepared(engine, Q.Q4_0, False)
    y = engine.forward(layer, x, ids, w)
    assert rel_error(y, reference(make_layer(Q.Q4_0)[1], x, ids, w)) < TOLERANCE[Q.Q4_0]
    one_by_one = np.concatenate([engine.forward(layer, x[t:t + 1], ids[t:t + 1], w[t:t + 1]) for t in range(16)])
    np.testing.assert_allclose(y, one_by_one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ggml_type", [Q.F32, Q.Q4_K], ids=lambda t: t.name)
def test_thread_counts_agree(ggml_type: Q) -> None:
    x, ids, w = routing(5)
    results = []
    for n_threads in (1, 2):
        with CpuExpertEngine(CpuExpertConfig(n_threads=n_threads)) as eng:
            results.append(eng.forward(eng.prepare(make_layer(ggml_type, True)[0]), x, ids, w))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert rel_error(results[1], reference(make_layer(ggml_type, True)[1], x, ids, w)) < TOLERANCE[ggml_type]


@pytest.mark.parametrize("ggml_type", [Q.Q4_0, Q.Q4_K, Q.Q8_0], ids=lambda t: t.name)
def test_repacked_weights_match_zero_copy(ggml_type: Q) -> None:
    weights, dense = make_layer(ggml_type, True)
    x, ids, w = routing(7)
    with CpuExpertEngine(CpuExpertConfig(n_threads=2, repack=True)) as eng:
        layer = eng.prepare(weights)
        y = eng.forward(layer, x, ids, w)
        y1 = eng.forward(layer, x[:1], ids[:1], w[:1])
    if ggml_lib.load_ggml().cpu.ggml_cpu_has_avx2() and ggml_type != Q.Q8_0:  # x86 AVX2 interleaves Q4_0, Q4_K
        assert layer.repacked == ("gate", "up", "down", "shexp_gate", "shexp_up", "shexp_down")
    assert "shexp_gate_inp" not in layer.repacked  # F32 [n_embd]: no repacked kernel, stays zero-copy
    assert rel_error(y, reference(dense, x, ids, w)) < TOLERANCE[ggml_type]
    np.testing.assert_allclose(y1, y[:1], rtol=1e-4, atol=1e-5)


# ---- graph reuse and memory -----------------------------------------------------------------

def test_layers_of_one_signature_share_a_graph() -> None:
    a, dense_a = make_layer(Q.Q8_0, True, seed=0)
    b, dense_b = make_layer(Q.Q8_0, True, seed=1)
    x, ids, w = routing(1)
    with CpuExpertEngine(CpuExpertConfig(n_threads=1)) as eng:
        layer_a, layer_b = eng.prepare(a), eng.prepare(b)
        for _ in range(2):  # alternate: each call rebinds the graph's weights
            assert rel_error(eng.forward(layer_a, x, ids, w), reference(dense_a, x, ids, w)) < 4e-2
            assert rel_error(eng.forward(layer_b, x, ids, w), reference(dense_b, x, ids, w)) < 4e-2
        assert len(eng._graphs) == 1
        layer_a.close()
        with pytest.raises(ValueError, match="closed"):
            eng.forward(layer_a, x, ids, w)
        assert rel_error(eng.forward(layer_b, x, ids, w), reference(dense_b, x, ids, w)) < 4e-2


def test_graph_cache_is_bounded_and_out_parameter() -> None:
    weights, dense = make_layer(Q.F32)
    with CpuExpertEngine(CpuExpertConfig(n_threads=1, max_graphs=2)) as eng:
        layer = eng.prepare(weights)
        for n_tokens in (1, 2, 3, 1, 5):
            x, ids, w = routing(n_tokens)
            out = np.full((n_tokens, N_EMBD), np.nan, np.float32)
            assert eng.forward(layer, x, ids, w, out=out) is out
            assert rel_error(out, reference(dense, x, ids, w)) < 1e-5
            assert len(eng._graphs) <= 2
        empty = eng.forward(layer, np.zeros((0, N_EMBD), np.float32), np.zeros((0, 2), np.int32),
                            np.zeros((0, 2), np.float32))
        assert empty.shape == (0, N_EMBD)


def test_rss_flat_over_10000_calls() -> None:
    """After warm-up, 10,000 calls (decode and two prefill sizes) leave RSS where it was."""
    weights, _ = make_layer(Q.Q4_0, True)
    proc = psutil.Process()
    with CpuExpertEngine(CpuExpertConfig(n_threads=1)) as eng:
        layer = eng.prepare(weights)
        inputs = [routing(n) for n in (1, 1, 1, 4, 1, 1, 1, 9)]
        for i in range(800):
            eng.forward(layer, *inputs[i % len(inputs)])
        gc.collect()
        before = proc.memory_info().rss
        for i in range(10_000):
            eng.forward(layer, *inputs[i % len(inputs)])
        gc.collect()
        grown = proc.memory_info().rss - before
    assert grown < 2 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10,000 calls"


@pytest.mark.parametrize("k", [1, TOP_K])
@pytest.mark.parametrize("shared", [False, True], ids=["routed", "with_shared_expert"])
def test_forward_token_equals_forward(engine: CpuExpertEngine, shared: bool, k: int) -> None:
    """The decode step's lean path (lists in, a row out) computes what `forward` does for T = 1,
    on a graph of its own k, and overwrites `out` (stale contents must not survive)."""
    x, ids, w = routing(1, seed=11, k=k)
    layer = prepared(engine, Q.Q8_0, shared)
    out = np.full(N_EMBD, 7.0, np.float32)
    engine.forward_token(layer, x[0], ids[0].tolist(), w[0].tolist(), out)
    np.testing.assert_array_equal(out, engine.forward(layer, x, ids, w)[0])
    assert rel_error(out[None], reference(make_layer(Q.Q8_0, shared)[1], x, ids, w)) < TOLERANCE[Q.Q8_0]


@pytest.mark.parametrize("case, message", [
    ("id_too_large", "expert id 8 out of range"),
    ("id_negative", "expert id -1 out of range"),
    ("no_ids", "need 1..8 expert ids"),
    ("weights_short", "and as many weights"),
    ("weights_nan", "NaN or infinity"),
    ("x_wrong_width", r"must be \[256\]"),
    ("out_float64", "out float32"),
])
def test_forward_token_bad_input_raises(engine: CpuExpertEngine, case: str, message: str) -> None:
    x, ids, w = routing(1, seed=12)
    x_row, id_list, w_list, out = x[0], ids[0].tolist(), w[0].tolist(), np.zeros(N_EMBD, np.float32)
    if case == "id_too_large":
        id_list[0] = N_EXPERT
    elif case == "id_negative":
        id_list[-1] = -1
    elif case == "no_ids":
        id_list, w_list = [], []
    elif case == "weights_short":
        w_list = w_list[:1]
    elif case == "weights_nan":
        w_list[0] = float("nan")
    elif case == "x_wrong_width":
        x_row = x_row[:-1]
    elif case == "out_float64":
        out = out.astype(np.float64)
    with pytest.raises(ValueError, match=message):
        engine.forward_token(prepared(engine, Q.F32, False), x_row, id_list, w_list, out)


# ---- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("id_too_large", "expert id 8 out of range"),
    ("id_negative", "expert id -1 out of range"),
    ("id_int64_too_large", "expert id 99 out of range"),
    ("ids_float", "must be integers"),
    ("ids_wrong_shape", "expert ids must be"),
    ("k_too_large", "1 <= k <= 8"),
    ("weights_nan", "NaN or infinity"),
    ("weights_inf", "NaN or infinity"),
    ("weights_wrong_shape", "expert weights must be"),
    ("x_wrong_width", "hidden states must be"),
    ("x_int", "hidden states must be"),
])
def test_bad_routing_raises(engine: CpuExpertEngine, case: str, message: str) -> None:
    x, ids, w = routing(3)
    if case == "id_too_large":
        ids[1, 0] = N_EXPERT
    elif case == "id_negative":
        ids[2, 1] = -1
    elif case == "id_int64_too_large":
        ids = ids.astype(np.int64)
        ids[0, 0] = 99
    elif case == "ids_float":
        ids = ids.astype(np.float32)
    elif case == "ids_wrong_shape":
        ids = ids[:2]
    elif case == "k_too_large":
        ids = np.zeros((3, N_EXPERT + 1), np.int32)
        w = np.zeros((3, N_EXPERT + 1), np.float32)
    elif case == "weights_nan":
        w[0, 1] = np.nan
    elif case == "weights_inf":
        w[2, 0] = np.inf
    elif case == "weights_wrong_shape":
        w = w[:, :1]
    elif case == "x_wrong_width":
        x = x[:, :-1]
    elif case == "x_int":
        x = x.astype(np.int32)
    with pytest.raises(ValueError, match=message):
        engine.forward(prepared(engine, Q.F32, False), x, ids, w)


def test_bad_weight_buffers_raise() -> None:
    good = make_layer(Q.Q4_0)[0]
    with pytest.raises(ValueError, match="needs 589824 bytes"):
        WeightTensor(good.gate.data[:-1], Q.Q4_0, good.gate.shape)
    with pytest.raises(ValueError, match="not supported"):
        WeightTensor(good.gate.data, Q.IQ2_XXS, good.gate.shape)
    with pytest.raises(ValueError, match="expert down has ggml shape"):
        ExpertWeights(good.gate, good.up, good.gate)


# ---- GGUF bridge ----------------------------------------------------------------------------

def test_expert_weights_from_gguf(tmp_path: Path, engine: CpuExpertEngine) -> None:
    """A Q8_0 GGUF written by gguf-py, memory-mapped by our reader, computed zero-copy."""
    weights, dense = make_layer(Q.Q8_0, True)
    path = tmp_path / "experts.gguf"
    writer = GGUFWriter(str(path), "qwen2moe")
    tensors = {"ffn_gate_exps": weights.gate, "ffn_up_exps": weights.up, "ffn_down_exps": weights.down,
               "ffn_gate_shexp": weights.shared.gate, "ffn_up_shexp": weights.shared.up,
               "ffn_down_shexp": weights.shared.down, "ffn_gate_inp_shexp": weights.shared.gate_inp}
    for name, t in tensors.items():
        np_shape = tuple(reversed(t.shape))
        if t.ggml_type == Q.F32:
            writer.add_tensor(f"blk.0.{name}.weight", t.data.view(np.float32).reshape(np_shape))
        else:
            byte_shape = np_shape[:-1] + (ggml_lib.row_bytes(t.ggml_type, t.shape[0]),)
            writer.add_tensor(f"blk.0.{name}.weight", t.data.reshape(byte_shape), raw_dtype=t.ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(path) as gguf:
        from_file = expert_weights_from_gguf(gguf, 0)
        assert np.shares_memory(from_file.gate.data, gguf.tensor("blk.0.ffn_gate_exps.weight").data)
        x, ids, w = routing(4)
        y = engine.forward(engine.prepare(from_file), x, ids, w)
        assert rel_error(y, reference(dense, x, ids, w)) < TOLERANCE[Q.Q8_0]
        del from_file
        gc.collect()


# ---- the binding ----------------------------------------------------------------------------

def test_compute_goes_through_cdll_which_releases_the_gil() -> None:
    libs = ggml_lib.load_ggml()
    assert type(libs.cpu) is ctypes.CDLL and not isinstance(libs.cpu, ctypes.PyDLL)


def test_abi_check_rejects_an_unexpected_tensor_overhead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ggml_lib, "EXPECTED_TENSOR_OVERHEAD", 400)
    with pytest.raises(GgmlLibraryError, match=r"ABI mismatch.*ggml_tensor_overhead\(\) = 368.*overhead 400"):
        ggml_lib.check_abi(ggml_lib.load_ggml())


def test_abi_check_rejects_a_wrong_struct_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same size, `ne` and `nb` swapped: only the live probe can tell."""
    fields = list(ggml_lib.GgmlTensor._fields_)
    fields[2], fields[3] = fields[3], fields[2]
    swapped = type("SwappedTensor", (ctypes.Structure,), {"_fields_": fields})
    monkeypatch.setattr(ggml_lib, "GgmlTensor", swapped)
    with pytest.raises(GgmlLibraryError, match=r"struct layout differs.*ne/nb"):
        ggml_lib.check_abi(ggml_lib.load_ggml())
