"""Write a synthetic GGUF with random weights in a real MoE model's shapes, loadable by llama.cpp.

For benchmarks that need a full-size model file but not a trained one (llama-bench vs our CPU
expert path on the same bytes). Every matrix is Q4_0; norms and routers are F32, as llama.cpp's
quantizer leaves them. The tokenizer is copied from one of llama.cpp's vocab-only GGUFs
(models/ggml-vocab-*.gguf) and padded / trimmed to the embedding's rows.

    python -m benchmarks.synthetic_gguf --shape mixtral --out /data/mixtral-q4_0.gguf       # 24.5 GiB
    python -m benchmarks.synthetic_gguf --shape qwen3 --out /data/qwen3.gguf --layers 4

Q4_0 blocks (fp16 scale + 16 bytes of 4-bit weights per 32 weights) are generated directly as
bytes, never as floats: a pool of random blocks (~72 MiB for each of at most 4 weight scales) is
written over and over from random starting blocks, so writing streams at disk speed and holds
nothing of the model in RAM. Speed does not depend on the values: this file is for timing, not
for text. The values are chosen only so that natural routing looks like a real model's at a
glance: different tokens pick different experts, every expert about equally often (`edge-moe
bench --routing natural` measures the cache on that):

- zero-mean weights (4-bit values -7..7, `random_q4_0_pool` says why);
- std 1 / sqrt(row length) (`weight_std`): every matvec keeps its input's scale whatever the
  dims (activations stay finite through all layers), router logits have std ~1, and a cut-down
  file (the tests') routes like the full-size one;
- token embeddings of rms 1 and attention outputs 10x smaller than the rest (`ATTN_OUT_GAIN`):
  random attention is close to a running mean of the context, a vector shared by every token
  that feeds back on itself layer after layer; at full gain it drowns the tokens' own states
  and deep layers route every token to the same few experts again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from edge_moe.converters.gguf_stream import atomic_gguf
from edge_moe.gguf_file import GGUFFile

Q4_0_BLOCK, Q4_0_BYTES = GGML_QUANT_SIZES[T.Q4_0]  # 32 weights in 18 bytes
POOL_BLOCKS = 4 << 20  # most random Q4_0 blocks kept per pool and tiled over matrices (~72 MiB)
EMBD_STD = 1.0  # token embeddings: as large as a normed hidden state (rms 1)
ATTN_OUT_GAIN = 0.1  # attn_output's std, times 1 / sqrt(row length) (the module's docstring says why)
NIBBLE_STD = (15**2 - 1) ** 0.5 / 12**0.5  # std of q - 8 for q uniform on 1..15 (~4.32)
FILE_TYPE_MOSTLY_Q4_0 = 2  # enum llama_ftype
VOCAB_DIRS = (  # where llama.cpp's vocab-only GGUFs are looked for (first hit wins)
    Path(__file__).resolve().parents[1] / ".carry" / "llama_src" / "models",
    Path("/work/dl/llama_cpp_python-0.3.36/vendor/llama.cpp/models"),
)


@dataclass(frozen=True)
class ModelShape:
    arch: str  # llama.cpp architecture name
    n_layer: int
    n_embd: int
    n_ff: int  # dense FFN width (metadata only: every layer here is MoE)
    n_ff_exp: int  # width of one expert
    n_expert: int
    n_expert_used: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    rope_theta: float
    norm_eps: float
    vocab_file: str  # llama.cpp's models/<vocab_file>

    @property
    def qk_norm(self) -> bool:
        return self.arch == "qwen3moe"  # per-head RMS norms on Q and K

    def expert_bytes(self) -> int:
        """Bytes of one Q4_0 expert's gate + up + down."""
        return 3 * self.n_embd * self.n_ff_exp // Q4_0_BLOCK * Q4_0_BYTES


SHAPES = {
    # Mixtral-8x7B: 32 layers, 8 experts of 4096 x 14336, top-2, GQA 32/8, SentencePiece vocab
    "mixtral": ModelShape("llama", 32, 4096, 14336, 14336, 8, 2, 32, 8, 128, 32000, 32768, 1e6, 1e-5,
                          "ggml-vocab-llama-spm.gguf"),
    # Qwen3-30B-A3B: 48 layers, 128 experts of 2048 x 768, top-8, GQA 32/4 with head_dim 128, BPE vocab
    "qwen3": ModelShape("qwen3moe", 48, 2048, 6144, 768, 128, 8, 32, 4, 128, 151936, 40960, 1e6, 1e-6,
                        "ggml-vocab-qwen2.gguf"),
}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: row length first
    ggml_type: T

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape))
        if self.ggml_type == T.F32:
            return 4 * n
        return n // Q4_0_BLOCK * Q4_0_BYTES


def plan_tensors(s: ModelShape) -> list[PlannedTensor]:
    """Every tensor of the model, in llama.cpp's names and ggml shapes."""
    e, q, kv = s.n_embd, s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    plan = [PlannedTensor("token_embd.weight", (e, s.n_vocab), T.Q4_0)]
    for i in range(s.n_layer):
        def add(suffix: str, shape: tuple[int, ...], ggml_type: T = T.Q4_0) -> None:
            plan.append(PlannedTensor(f"blk.{i}.{suffix}.weight", shape, ggml_type))
        add("attn_norm", (e,), T.F32)
        add("attn_q", (e, q))
        add("attn_k", (e, kv))
        add("attn_v", (e, kv))
        add("attn_output", (q, e))
        if s.qk_norm:
            add("attn_q_norm", (s.head_dim,), T.F32)
            add("attn_k_norm", (s.head_dim,), T.F32)
        add("ffn_norm", (e,), T.F32)
        add("ffn_gate_inp", (e, s.n_expert), T.F32)
        add("ffn_gate_exps", (e, s.n_ff_exp, s.n_expert))
        add("ffn_up_exps", (e, s.n_ff_exp, s.n_expert))
        add("ffn_down_exps", (s.n_ff_exp, e, s.n_expert))
    plan.append(PlannedTensor("output_norm.weight", (e,), T.F32))
    plan.append(PlannedTensor("output.weight", (e, s.n_vocab), T.Q4_0))
    return plan


def find_vocab(name: str, vocab_dir: Path | None) -> Path:
    dirs = [vocab_dir] if vocab_dir else [Path(d) for d in os.environ.get("EDGE_MOE_VOCAB_DIR", "").split(":")
                                         if d] + list(VOCAB_DIRS)
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"{name} not found in {', '.join(map(str, dirs))}: pass --vocab-dir (llama.cpp's "
                            "models/ folder, e.g. the llama-cpp-python sdist's vendor/llama.cpp/models)")


def copy_tokenizer(writer: GGUFWriter, vocab_path: Path, n_vocab: int) -> None:
    """The tokenizer.* keys of a vocab-only GGUF, with the vocabulary padded / trimmed to n_vocab."""
    with GGUFFile(vocab_path) as vocab:  # our reader: ~50x faster than gguf.GGUFReader on 150k strings
        fields = {k: v for k, v in vocab.metadata.items() if k.startswith("tokenizer.")}
    tokens = list(fields["tokenizer.ggml.tokens"].value)
    for name, field in fields.items():
        vtype = GGUFValueType(field.type)
        value = field.value
        if vtype != GGUFValueType.ARRAY:
            if name.endswith("_token_id") and value >= n_vocab:
                continue  # a special token the trimmed vocabulary lost
            writer.add_key_value(name, value, vtype)
            continue
        values = value.tolist() if isinstance(value, np.ndarray) else list(value)
        pad = range(len(tokens), n_vocab)
        if name == "tokenizer.ggml.tokens":
            values = values[:n_vocab] + [f"[PAD{i}]" for i in pad]
        elif name == "tokenizer.ggml.scores":
            values = values[:n_vocab] + [0.0] * len(pad)
        elif name == "tokenizer.ggml.token_type":
            values = values[:n_vocab] + [5] * len(pad)  # llama_token_type UNUSED, as llama.cpp's converters pad
        elif name == "tokenizer.ggml.merges" and n_vocab < len(tokens):
            kept = set(tokens[:n_vocab])
            values = [m for m in values if "".join(m.split(" ", 1)) in kept]
        writer.add_key_value(name, values, vtype, sub_type=GGUFValueType(field.element_type))


def write_metadata(writer: GGUFWriter, s: ModelShape, name: str) -> None:
    w = writer
    w.add_name(name)
    w.add_type("model")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.norm_eps)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    w.add_rope_dimension_count(s.head_dim)
    if s.arch == "llama":
        w.add_vocab_size(s.n_vocab)
    if s.arch == "qwen3moe":
        w.add_expert_feed_forward_length(s.n_ff_exp)
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    w.add_file_type(FILE_TYPE_MOSTLY_Q4_0)
    w.add_quantization_version(2)


def weight_std(t: PlannedTensor) -> float:
    """Std of a tensor's weights (Q4_0 and routers): 1 / sqrt(row length), so that every matvec keeps
    the rms of its input whatever the dims and a cut-down file (tests) behaves like the full-size
    one; token embeddings EMBD_STD; attention outputs ATTN_OUT_GAIN times less than the rest."""
    if t.name == "token_embd.weight":
        return EMBD_STD
    gain = ATTN_OUT_GAIN if t.name.endswith("attn_output.weight") else 1.0
    return gain * t.shape[0] ** -0.5


def random_q4_0_pool(rng: np.random.Generator, n_blocks: int, std: float) -> np.ndarray:
    """n_blocks random Q4_0 blocks as bytes (weights' std ~`std`): fp16 scale + 32 4-bit weights.

    Each nibble q is uniform on 1..15, so a weight d * (q - 8) has mean exactly 0. Uniform random
    bytes (q on 0..15) would give every weight a mean of -d/2 (mean / std ~ -0.1): each matvec
    then amplifies the all-ones direction ~0.11 * sqrt(n_embd) times more than any other (7x at
    4096), every token's hidden state ends up on that one direction, and the router (which sees
    the RMS-normed state) picks the same experts for every token at every layer.
    """
    blocks = np.empty((n_blocks, Q4_0_BYTES), np.uint8)
    scales = (std / NIBBLE_STD * rng.uniform(0.5, 1.5, n_blocks) / (13 / 12) ** 0.5).astype(np.float16)
    blocks[:, :2] = scales.view(np.uint8).reshape(n_blocks, 2)
    quants = rng.integers(1, 16, (n_blocks, Q4_0_BYTES - 2), dtype=np.uint8)  # low nibbles
    quants |= rng.integers(1, 16, (n_blocks, Q4_0_BYTES - 2), dtype=np.uint8) << 4  # high nibbles
    blocks[:, 2:] = quants
    return blocks.reshape(-1)


def f32_tensor(rng: np.random.Generator, t: PlannedTensor) -> np.ndarray:
    if "norm" in t.name:
        return np.ones(t.shape[::-1], np.float32)
    return rng.normal(0.0, weight_std(t), t.shape[::-1]).astype(np.float32)  # router logits: std ~1


def write_model(s: ModelShape, out: Path, name: str, seed: int = 0, vocab_dir: Path | None = None,
                progress: bool = True) -> Path:
    """Write the synthetic model to `out` (via `out.partial`, renamed when complete)."""
    rng = np.random.default_rng(seed)
    plan = plan_tensors(s)
    writer = GGUFWriter(path=None, arch=s.arch)
    write_metadata(writer, s, name)
    copy_tokenizer(writer, find_vocab(s.vocab_file, vocab_dir), s.n_vocab)
    for t in plan:
        writer.add_tensor_info(t.name, t.shape[::-1], np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)

    pools: dict[float, memoryview] = {}  # one per weight std (at most 4), made on first use
    total = sum(t.nbytes for t in plan)
    written_all = 0
    start = time.perf_counter()
    with atomic_gguf(writer, out) as fout:
        for t in plan:
            writer.write_padding(fout, fout.tell())
            if t.ggml_type == T.F32:
                fout.write(f32_tensor(rng, t).tobytes())
            else:  # tile the pool from a random block: consecutive experts get different bytes
                std = weight_std(t)
                if std not in pools:
                    n_blocks = max(u.nbytes for u in plan if u.ggml_type == T.Q4_0 and weight_std(u) == std)
                    pools[std] = memoryview(random_q4_0_pool(rng, min(POOL_BLOCKS, n_blocks // Q4_0_BYTES), std))
                pool = pools[std]
                left, pos = t.nbytes, int(rng.integers(len(pool) // Q4_0_BYTES)) * Q4_0_BYTES
                while left:
                    n = min(left, len(pool) - pos)
                    fout.write(pool[pos:pos + n])
                    left, pos = left - n, 0
            written_all += t.nbytes
            writer.write_padding(fout, t.nbytes)
            if progress and t.name.endswith("ffn_down_exps.weight"):
                el = time.perf_counter() - start
                print(f"\r{out.name}: {written_all / 2**30:.1f} / {total / 2**30:.1f} GiB, "
                      f"{written_all / el / 1e9:.1f} GB/s", end="", file=sys.stderr, flush=True)
    if progress:
        print(f"\n{out}: {out.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, help="fewer layers than the real model (for small test files)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-dir", type=Path, help="folder holding llama.cpp's ggml-vocab-*.gguf")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    s = SHAPES[args.shape]
    if args.layers is not None:
        if args.layers < 1:
            p.error("--layers must be >= 1")
        s = replace(s, n_layer=args.layers)
    write_model(s, args.out, f"synthetic-{args.shape}-{s.n_layer}L-Q4_0", args.seed, args.vocab_dir,
                progress=not args.quiet)


if __name__ == "__main__":
    main()
