"""Dense weights kept in their GGUF block formats (dense_format "quantized"): the linear and
embedding paths against dequantize + matmul, the format choice, and the VRAM the planner
counts for them against what the loader allocates. Parity with llama.cpp of whole models in
this format is in test_executor_parity.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

pytest.importorskip("triton")

import edge_moe.dense_linear as dl  # noqa: E402
from edge_moe.dense_weights import (QUANT_ALIGNMENT, choose_dense_format, dense_device_bytes,  # noqa: E402
                                    load_dense_weights, quant_layout)
from edge_moe.ggml_lib import quantize_rows  # noqa: E402
from edge_moe.gguf_file import GGUFFile  # noqa: E402
from edge_moe.model_config import read_config  # noqa: E402
from edge_moe.quant_ops import QuantMatrix  # noqa: E402
from tests.reference import x_as_int8_kernels_see  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _store(rng: np.random.Generator, qtype: T, shapes: list[tuple[int, int]], scratch: int,
           ) -> tuple[list[dl.QuantWeight], list[torch.Tensor]]:
    """Matrices of `shapes` quantized to `qtype` in one store (256-aligned), and their values."""
    raws, values, offsets, at = [], [], [], 0
    for n, k in shapes:
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.1
        raw = quantize_rows(w, qtype)
        raws.append(raw.reshape(-1))
        values.append(torch.from_numpy(dequantize(raw, qtype).reshape(n, k).astype(np.float32)).to(DEVICE))
        offsets.append(at)
        at = -(-(at + raw.size) // QUANT_ALIGNMENT) * QUANT_ALIGNMENT
    data = torch.zeros(at, dtype=torch.uint8)
    for o, r in zip(offsets, raws):
        data[o:o + r.size] = torch.from_numpy(r)
    store = dl.DenseQuantStore(data.to(DEVICE), offsets, scratch, torch.float32)
    return [dl.QuantWeight(store, i, o, QuantMatrix(int(qtype), n, k))
            for i, (o, (n, k)) in enumerate(zip(offsets, shapes))], values


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_linear_equals_dequantize_matmul(qtype: T) -> None:
    """T = 1 and 3 (matvec kernel), T = 9 (dequantize + matmul, in row chunks when the scratch
    holds less than the matrix), bias after; a RowStack concatenates."""
    rng = np.random.default_rng(int(qtype))
    k = 512
    (a, b), (va, vb) = _store(rng, qtype, [(40, k), (24, k)], scratch=16 * k)  # a: 3 chunks, b: 2
    bias = torch.from_numpy(rng.standard_normal(40).astype(np.float32)).to(DEVICE)
    for t in (1, 3, 9):
        x_np = rng.standard_normal((t, k)).astype(np.float32)
        x = torch.from_numpy(x_np).to(DEVICE)
        # the matvec kernel's x (int8 for Q4_0/Q8_0); dequantize + matmul takes x as it is
        xs = torch.from_numpy(x_as_int8_kernels_see(x_np, int(qtype)) if t <= dl.MATVEC_MAX_TOKENS else x_np).to(DEVICE)
        for w, v in ((a, va), (b, vb)):
            torch.testing.assert_close(dl.linear(x, w), xs @ v.T, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dl.linear(x, a, bias), xs @ va.T + bias, rtol=1e-4, atol=1e-4)
        stacked = dl.linear(x, dl.RowStack((a, vb)))  # mixed: blocks and a float tensor
        torch.testing.assert_close(stacked, torch.cat([xs @ va.T, x @ vb.T], 1), rtol=1e-4, atol=1e-4)


def test_matvec_reads_no_scratch_and_accepts_views() -> None:
    """The few-token path (the one decode graphs capture) uses only the tables made at load;
    a non-contiguous x (a slice) is fine."""
    rng = np.random.default_rng(1)
    (w,), (v,) = _store(rng, T.Q8_0, [(16, 256)], scratch=0)
    x = torch.from_numpy(rng.standard_normal((2, 512)).astype(np.float32)).to(DEVICE)[:, ::2]
    assert dl.MATVEC_MAX_TOKENS >= 2
    xs = torch.from_numpy(x_as_int8_kernels_see(x.cpu().numpy(), int(T.Q8_0))).to(DEVICE)
    torch.testing.assert_close(dl.linear(x, w), xs @ v.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q6_K], ids=lambda t: t.name)
def test_embedding_rows(qtype: T) -> None:
    rng = np.random.default_rng(2)
    (w,), (v,) = _store(rng, qtype, [(50, 256)], scratch=0)
    toks = torch.tensor([3, 49, 0, 3, 17], device=DEVICE)
    torch.testing.assert_close(dl.embedding(w, toks, torch.float32), v[toks])
    torch.testing.assert_close(dl.embedding(w, 49, torch.float32), v[49:50])
    torch.testing.assert_close(dl.embedding(v, toks, torch.float32), v[toks])


def test_format_choice(tiny_gguf: Callable[[str, str], Path]) -> None:
    q = GGUFFile(tiny_gguf("qwen2moe", "q4_0"))
    f = GGUFFile(tiny_gguf("qwen2moe", "f16"))
    cq, cf = read_config(q), read_config(f)
    assert choose_dense_format("auto", "cuda", q, cq) == "quantized"
    assert choose_dense_format("auto", "cpu", q, cq) == "fp16"
    assert choose_dense_format("auto", "cuda", f, cf) == "fp16"  # no block type: nothing to save
    if os.environ.get("TRITON_INTERPRET") == "1":  # kernels on CPU tensors need the interpreter
        assert choose_dense_format("quantized", "cpu", q, cq) == "quantized"
    else:
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            choose_dense_format("quantized", "cpu", q, cq)
    with pytest.raises(ValueError):
        choose_dense_format("int4", "cuda", q, cq)


@pytest.mark.parametrize("arch", ["qwen2moe", "qwen3moe"])
def test_quantized_bytes_are_what_the_planner_counts(arch: str, tiny_gguf: Callable[[str, str], Path]) -> None:
    """dense_device_bytes (the planner's figure) is what load_dense_weights allocates, and
    quantized dense weights take far fewer bytes than fp16 ones."""
    gguf = GGUFFile(tiny_gguf(arch, "q4_0"))
    cfg = read_config(gguf)
    dense = load_dense_weights(gguf, cfg, torch.device("cpu"), torch.float16, "quantized")
    seen: dict[int, int] = {}

    def count(v: object) -> None:
        if isinstance(v, torch.Tensor):
            seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        elif isinstance(v, (list, tuple)):
            for u in v:
                count(u)
        elif hasattr(v, "__dict__") and not isinstance(v, (dl.QuantWeight, dl.RowStack)):
            for u in vars(v).values():
                count(u)

    count(dense)  # the float tensors and the store's buffer, scratch and tables
    tables = dense.quant.pair_offsets.numel() * 8 + dense.quant.token_rows.numel() * 4
    planned = dense_device_bytes(gguf, cfg, "quantized", 2)
    assert sum(seen.values()) == planned + tables
    lay = quant_layout(gguf, cfg)
    assert all(o % QUANT_ALIGNMENT == 0 for n, o in lay.offsets.items() if n.endswith("attn_q.weight"))
    assert isinstance(dense.layers[0].wqkv, dl.QuantWeight)  # q, k, v in one run
    assert dense.layers[0].wqkv.shape == (cfg.n_head * cfg.head_dim + 2 * cfg.n_head_kv * cfg.head_dim, cfg.n_embd)
    # Q4_0 is 4.5 bits a weight; the scratch (one layer matrix in fp16) is large only in tiny models
    assert planned - 2 * lay.scratch_elems < 0.45 * dense_device_bytes(gguf, cfg, "fp16", 2)


def test_planner_gives_the_saved_vram_to_the_cache(tiny_gguf: Callable[[str, str], Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the plan counts the dense weights as "auto" keeps them (GGUF blocks): at the same
    VRAM budget the expert slots get the bytes that saves over fp16."""
    import edge_moe.dense_weights as dw
    from edge_moe.hardware import GIB
    from edge_moe.planner import PlanOverrides, format_plan, make_plan
    from tests.test_planner import machine

    path = tiny_gguf("qwen3moe", "q4_0")
    gguf = GGUFFile(path)
    cfg = read_config(gguf)
    from edge_moe.planner import RUNTIME_RESERVE_BYTES

    hw, profile = machine("h100_box", tmp_path)
    o = PlanOverrides(n_ctx=512, admission="all")
    quant = make_plan(path, hw, profile, overrides=o)
    assert quant.dense_format == "quantized" and "(quantized)" in format_plan(quant)
    assert quant.dense_bytes == dense_device_bytes(gguf, cfg, "quantized", 2)
    with monkeypatch.context() as mp:
        mp.setattr(dw, "choose_dense_format", lambda *a: "fp16")  # as before quantized dense weights
        fp16 = make_plan(path, hw, profile, overrides=o)
        assert fp16.dense_format == "fp16" and fp16.dense_bytes == dense_device_bytes(gguf, cfg, "fp16", 2)
        # a budget leaving fp16 dense weights room for 2 slots (one way in each of the 2 sets)
        slot = fp16.slot_bytes
        budget = fp16.dense_bytes + fp16.kv_bytes + fp16.workspace_bytes + RUNTIME_RESERVE_BYTES + int(2.5 * slot)
        # no pinned layers: every slot the budget holds goes to the sets (the planner may otherwise
        # choose to leave a few unused)
        o = PlanOverrides(n_ctx=512, admission="all", vram_budget_gib=budget / GIB, pinned_layers=0)
        f_plan = make_plan(path, hw, profile, overrides=o)
    q_plan = make_plan(path, hw, profile, overrides=o)
    saved = f_plan.dense_bytes - q_plan.dense_bytes
    assert f_plan.cache.n_slots == 2 and saved > 4 * slot
    # the slots get what the quantized dense weights save (whole ways: one slot per set may be lost)
    assert q_plan.cache.n_slots < cfg.n_layer * cfg.n_expert  # not capped by the model's experts
    assert q_plan.cache.n_slots >= 2 + saved // slot - (q_plan.cache.n_sets - 1)
    assert q_plan.planned_vram_bytes <= budget
