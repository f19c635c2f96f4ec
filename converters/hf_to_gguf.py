"""Convert an HF safetensors MoE checkpoint into one llama.cpp-compatible GGUF, streaming.

1. plan: map every checkpoint tensor to its GGUF name, check its shape against
   config.json, pick its ggml type; unknown or missing tensors are errors.
2. write the header, metadata and tensor infos (all sizes are known from the plan),
3. stream the data: each source matrix is read in row chunks, encoded by ggml and
   written; experts are stacked by writing expert after expert, so the peak
   memory is a chunk of one expert, whatever the model size.
The output goes to `OUT.partial` and is renamed to OUT only when complete (gguf_stream.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType as T
from tqdm import tqdm

from edge_moe.converters.arch_tables import ARCH_SPECS, GLOBAL_TENSORS, ArchSpec, HParams, write_hparams
from edge_moe.converters.gguf_stream import atomic_gguf
from edge_moe.converters.hf_checkpoint import HFCheckpoint
from edge_moe.converters.quant_policy import OUTTYPES, encode_rows, nbytes_of, tensor_type
from edge_moe.converters.tokenizer_export import read_vocab, write_vocab
from edge_moe.errors import ModelFormatError, UnsupportedModelError

CHUNK_BYTES = 32 << 20  # float32 bytes read and encoded at a time
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    shape: tuple[int, ...]  # numpy order: row length last; experts first for stacked tensors
    ggml_type: T
    sources: tuple[str, ...]  # HF tensors, in order; several = experts stacked along axis 0
    permute_heads: int = 0  # > 0: llama Q/K row reordering for this many heads

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.ggml_type, self.shape)


def _expected_shape(suffix: str, hp: HParams, arch: str) -> tuple[int, ...]:
    """The HF shape of one tensor from its GGUF suffix (the shape check of the plan)."""
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    e, v, d = hp.n_embd, hp.n_vocab, hp.head_dim
    per_head_norm = arch == "qwen3moe"
    table: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (v, e), "output.weight": (v, e), "output.bias": (v,),
        "output_norm.weight": (e,), "output_norm.bias": (e,),
        "attn_norm.weight": (e,), "attn_norm.bias": (e,), "ffn_norm.weight": (e,), "ffn_norm.bias": (e,),
        "attn_q.weight": (q, e), "attn_k.weight": (kv, e), "attn_v.weight": (kv, e), "attn_output.weight": (e, q),
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,), "attn_output.bias": (e,),
        "attn_q_norm.weight": (d,) if per_head_norm else (q,),
        "attn_k_norm.weight": (d,) if per_head_norm else (kv,),
        "ffn_gate_inp.weight": (hp.n_expert, e),
        "ffn_gate_exps.weight": (hp.n_ff_expert, e), "ffn_up_exps.weight": (hp.n_ff_expert, e),
        "ffn_down_exps.weight": (e, hp.n_ff_expert),
        "ffn_gate_shexp.weight": (hp.n_ff_shared, e), "ffn_up_shexp.weight": (hp.n_ff_shared, e),
        "ffn_down_shexp.weight": (e, hp.n_ff_shared), "ffn_gate_inp_shexp.weight": (1, e),
    }
    return table[suffix]


def plan_tensors(ckpt: HFCheckpoint, spec: ArchSpec, hp: HParams, outtype: T) -> list[PlannedTensor]:
    """Every output tensor, shape-checked; every checkpoint tensor must be used exactly once."""
    used: set[str] = set()
    plan: list[PlannedTensor] = []

    def check(hf_name: str, suffix: str) -> tuple[int, ...]:
        want = _expected_shape(suffix, hp, spec.gguf_arch)
        got = ckpt.shape(hf_name)
        if got != want:
            where = ckpt.tensors[hf_name].file
            raise ModelFormatError(where, f"tensor {hf_name!r} has shape {list(got)}, but config.json "
                                          f"implies {list(want)}")
        used.add(hf_name)
        return got

    def add(gguf_name: str, suffix: str, sources: tuple[str, ...], permute_heads: int = 0) -> None:
        shape = check(sources[0], suffix)
        for s in sources[1:]:
            check(s, suffix)
        if len(sources) > 1:
            shape = (len(sources), *shape)
        plan.append(PlannedTensor(gguf_name, shape, tensor_type(gguf_name, shape, outtype), sources, permute_heads))

    for hf_name, gguf_name in GLOBAL_TENSORS.items():
        if hf_name in ckpt.tensors:
            add(gguf_name, gguf_name, (hf_name,))
    if "model.embed_tokens.weight" not in used:
        raise ModelFormatError(ckpt.dir, "missing tensor 'model.embed_tokens.weight'")

    for i in range(hp.n_layer):
        pre = f"model.layers.{i}."
        for hf_suffix, gguf_suffix in spec.layer_tensors.items():
            name = pre + hf_suffix
            if name not in ckpt.tensors:
                if hf_suffix in spec.optional:
                    continue
                raise ModelFormatError(ckpt.dir, f"missing tensor {name!r}")
            heads = 0
            if spec.permute_qk and gguf_suffix == "attn_q.weight":
                heads = hp.n_head
            elif spec.permute_qk and gguf_suffix == "attn_k.weight":
                heads = hp.n_head_kv
            add(f"blk.{i}.{gguf_suffix}", gguf_suffix, (name,), heads)
        add(f"blk.{i}.ffn_gate_inp.weight", "ffn_gate_inp.weight", (pre + spec.router,))
        for kind, gguf_suffix in spec.expert_kinds.items():
            sources = tuple(f"{pre}{spec.expert_prefix}.{e}.{kind}.weight" for e in range(hp.n_expert))
            for s in sources:
                if s not in ckpt.tensors:
                    raise ModelFormatError(ckpt.dir, f"missing expert tensor {s!r}")
            add(f"blk.{i}.{gguf_suffix}", gguf_suffix, sources)

    unused = sorted(n for n in ckpt.tensors if n not in used and not n.endswith(IGNORED_SUFFIXES))
    if unused:
        raise ModelFormatError(ckpt.dir, f"{len(unused)} checkpoint tensors have no place in a "
                                         f"{spec.gguf_arch} GGUF, e.g. {unused[0]!r} (wrong architecture "
                                         f"in config.json, or more layers than num_hidden_layers?)")
    return plan


def _permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    # HF stores each head's rotary halves apart; llama.cpp's "norm" rope wants them interleaved.
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encoded_chunks(ckpt: HFCheckpoint, t: PlannedTensor) -> Iterator[np.ndarray]:
    """The bytes of one output tensor, in order, a bounded chunk at a time."""
    for source in t.sources:
        shape = ckpt.shape(source)
        if t.permute_heads:
            yield encode_rows(_permute_qk(ckpt.read(source), t.permute_heads), t.ggml_type)
            continue
        if len(shape) == 1:
            yield encode_rows(ckpt.read(source).reshape(1, -1), t.ggml_type)
            continue
        rows_per_chunk = max(1, CHUNK_BYTES // (4 * shape[-1]))
        for start in range(0, shape[0], rows_per_chunk):
            stop = min(shape[0], start + rows_per_chunk)
            yield encode_rows(ckpt.read(source, rows=(start, stop)), t.ggml_type)


def spec_for(ckpt: HFCheckpoint) -> ArchSpec:
    archs = ckpt.config.get("architectures") or []
    for a in archs:
        if a in ARCH_SPECS:
            return ARCH_SPECS[a]
    raise UnsupportedModelError(ckpt.dir / "config.json",
                                f"architecture {archs or ckpt.config.get('model_type')!r} is not supported; "
                                f"supported: {', '.join(ARCH_SPECS)}")


def convert(model_dir: str | Path, outfile: str | Path, outtype: str = "f16", progress: bool = True) -> Path:
    """Convert `model_dir` to the GGUF `outfile`; returns the path written."""
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown --outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
    tensor_outtype, file_type = OUTTYPES[outtype]
    ckpt = HFCheckpoint(model_dir)
    spec = spec_for(ckpt)
    try:
        hp = HParams.from_config(ckpt.config)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(ckpt.dir / "config.json", f"missing or invalid hyper-parameter: {e}") from None
    plan = plan_tensors(ckpt, spec, hp, tensor_outtype)
    vocab = read_vocab(ckpt.dir, ckpt.config, spec.bpe_pre)

    out = Path(outfile)
    writer = GGUFWriter(path=None, arch=spec.gguf_arch)
    write_hparams(writer, spec, hp, model_name=ckpt.dir.name)
    writer.add_type("model")
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(2)
    write_vocab(writer, vocab)
    for t in plan:
        writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)

    with atomic_gguf(writer, out) as fout:
        total = sum(t.nbytes for t in plan)
        with tqdm(total=total, unit="B", unit_scale=True, desc=out.name, disable=not progress,
                  file=sys.stderr) as bar:
            for t in plan:
                writer.write_padding(fout, fout.tell())
                written = 0
                for chunk in _encoded_chunks(ckpt, t):
                    fout.write(chunk.tobytes())  # tobytes(): one copy of a bounded chunk
                    written += chunk.nbytes
                    bar.update(chunk.nbytes)
                if written != t.nbytes:
                    raise RuntimeError(f"internal error: wrote {written} bytes for {t.gguf_name}, "
                                       f"planned {t.nbytes}")
                writer.write_padding(fout, written)
    return out
