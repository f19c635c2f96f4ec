"""One layer's expert weights as raw ggml byte buffers: what the CPU expert path consumes.

The engine (edge_moe/cpu_experts.py) depends only on these dataclasses, not on
the GGUF loader; `expert_weights_from_gguf` is the one bridge. Shapes are in
ggml order (row length first), exactly as the GGUF stores them:

    ffn_gate_exps / ffn_up_exps   [n_embd, n_ff, n_expert]
    ffn_down_exps                 [n_ff, n_embd, n_expert]
    ffn_gate_shexp / ffn_up_shexp [n_embd, n_ff_shexp]       (Qwen2-MoE style shared expert)
    ffn_down_shexp                [n_ff_shexp, n_embd]
    ffn_gate_inp_shexp            [n_embd]                   (sigmoid gate on the shared expert)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGMLQuantizationType

from edge_moe.ggml_lib import row_bytes
from edge_moe.gguf_file import GGUFFile, GGUFTensor

Q = GGMLQuantizationType

# Types whose mul_mat / mul_mat_id ggml's CPU backend computes (and the tests cover).
SUPPORTED_TYPES = frozenset({
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
})


class Activation(enum.Enum):
    """The gated activation of an expert FFN; the value is ggml's `enum ggml_glu_op`."""

    SILU = 2  # SwiGLU: silu(gate) * up (Mixtral, Phi-3.5-MoE, Qwen2/3-MoE, OLMoE)
    GELU_TANH = 1  # GeGLU, tanh-approximated gelu
    GELU_ERF = 4  # GeGLU, exact (erf) gelu


@dataclass(frozen=True)
class WeightTensor:
    """One weight tensor: its bytes (kept alive here), ggml type and ggml shape."""

    data: np.ndarray  # uint8, C-contiguous: e.g. a read-only view into a memory-mapped GGUF
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order: (row length, rows[, experts])

    def __post_init__(self) -> None:
        if self.ggml_type not in SUPPORTED_TYPES:
            names = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
            raise ValueError(f"ggml type {self.ggml_type.name} is not supported by the CPU expert path ({names})")
        if not 1 <= len(self.shape) <= 3 or any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"weight shape {list(self.shape)} must have 1 to 3 positive dimensions")
        if self.data.dtype != np.uint8 or not self.data.flags.c_contiguous:
            raise ValueError(f"weight bytes must be a C-contiguous uint8 array, got {self.data.dtype} "
                             f"(contiguous: {self.data.flags.c_contiguous})")
        expected = row_bytes(self.ggml_type, self.shape[0]) * int(np.prod(self.shape[1:], dtype=np.int64))
        if self.data.nbytes != expected:
            raise ValueError(f"{self.ggml_type.name} {list(self.shape)} needs {expected} bytes, "
                             f"got {self.data.nbytes}")

    @classmethod
    def from_gguf(cls, tensor: GGUFTensor) -> WeightTensor:
        return cls(tensor.data, tensor.ggml_type, tuple(int(d) for d in tensor.shape))


@dataclass(frozen=True)
class SharedExpert:
    """An always-on dense FFN of its own width, added to the routed experts' sum."""

    gate: WeightTensor  # [n_embd, n_ff_shexp]
    up: WeightTensor  # [n_embd, n_ff_shexp]
    down: WeightTensor  # [n_ff_shexp, n_embd]
    gate_inp: WeightTensor | None = None  # [n_embd]: output scaled by sigmoid(x . gate_inp)


@dataclass(frozen=True)
class ExpertWeights:
    """All experts of one MoE layer (plus its shared expert, if the model has one)."""

    gate: WeightTensor  # [n_embd, n_ff, n_expert]
    up: WeightTensor  # [n_embd, n_ff, n_expert]
    down: WeightTensor  # [n_ff, n_embd, n_expert]
    shared: SharedExpert | None = None
    activation: Activation = Activation.SILU

    def __post_init__(self) -> None:
        e, f, n = self.gate.shape if len(self.gate.shape) == 3 else (0, 0, 0)
        checks = [("gate", self.gate, (e, f, n)), ("up", self.up, (e, f, n)), ("down", self.down, (f, e, n))]
        if self.shared is not None:
            fs = self.shared.gate.shape[1] if len(self.shared.gate.shape) == 2 else 0
            checks += [("shared gate", self.shared.gate, (e, fs)), ("shared up", self.shared.up, (e, fs)),
                       ("shared down", self.shared.down, (fs, e))]
            if self.shared.gate_inp is not None and self.shared.gate_inp.shape not in ((e,), (e, 1)):
                raise ValueError(f"shared expert gate_inp has shape {list(self.shared.gate_inp.shape)}, "
                                 f"expected [{e}]")
        for what, tensor, expected in checks:
            if tensor.shape != expected or 0 in expected:
                raise ValueError(f"expert {what} has ggml shape {list(tensor.shape)}, expected {list(expected)} "
                                 f"(gate is [n_embd, n_ff, n_expert] = {list(self.gate.shape)})")

    @property
    def n_embd(self) -> int:
        return self.gate.shape[0]

    @property
    def n_ff(self) -> int:
        return self.gate.shape[1]

    @property
    def n_expert(self) -> int:
        return self.gate.shape[2]

    def bytes_per_expert(self) -> int:
        """Bytes of one routed expert's gate + up + down: what a CPU miss reads from DRAM."""
        return (self.gate.data.nbytes + self.up.data.nbytes + self.down.data.nbytes) // self.n_expert

    def tensors(self) -> dict[str, WeightTensor]:
        """Every tensor by role, in a fixed order (the engine's graph slots use these names)."""
        out = {"gate": self.gate, "up": self.up, "down": self.down}
        if self.shared is not None:
            out |= {"shexp_gate": self.shared.gate, "shexp_up": self.shared.up, "shexp_down": self.shared.down}
            if self.shared.gate_inp is not None:
                out["shexp_gate_inp"] = self.shared.gate_inp
        return out


def expert_weights_from_gguf(gguf: GGUFFile, layer: int, activation: Activation = Activation.SILU) -> ExpertWeights:
    """Layer `layer`'s experts as zero-copy views into the GGUF's memory map (keep `gguf` open)."""
    def tensor(name: str) -> WeightTensor:
        return WeightTensor.from_gguf(gguf.tensor(f"blk.{layer}.{name}.weight"))

    def has(name: str) -> bool:
        return f"blk.{layer}.{name}.weight" in gguf.tensors

    shared = None
    if has("ffn_gate_shexp"):
        gate_inp = tensor("ffn_gate_inp_shexp") if has("ffn_gate_inp_shexp") else None
        shared = SharedExpert(tensor("ffn_gate_shexp"), tensor("ffn_up_shexp"), tensor("ffn_down_shexp"), gate_inp)
    return ExpertWeights(tensor("ffn_gate_exps"), tensor("ffn_up_exps"), tensor("ffn_down_exps"), shared, activation)
