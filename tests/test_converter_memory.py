"""The converter streams: its peak memory stays far below the checkpoint's size.

Measured as the peak RSS of a converter process minus that of a process that
imports the same modules and loads ggml, on a checkpoint of ~400 MB whose single
stacked expert tensor (8 experts) is ~64 MB in fp32.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_moe.converters.tiny_checkpoints import make_tiny_checkpoint

# VmHWM (this process image's peak RSS), not ru_maxrss, which Linux carries over from the
# forking parent (pytest with transformers loaded) across exec.
_PROBE = """
import re, sys
from edge_moe.converters.hf_to_gguf import convert
from edge_moe.ggml_lib import load_ggml
load_ggml()
if sys.argv[1] == "convert":
    convert(sys.argv[2], sys.argv[3], outtype="q4_0", progress=False)
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""


def _peak_rss(*args: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_bounded(tmp_path: Path) -> None:
    model_dir = make_tiny_checkpoint("mixtral", tmp_path / "big", seed=1, hidden_size=512,
                                     moe_intermediate_size=4096)
    ckpt_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    stacked_expert_tensor = 8 * 512 * 4096 * 4
    baseline = _peak_rss("baseline")
    peak = _peak_rss("convert", str(model_dir), str(tmp_path / "out.gguf"))
    extra = peak - baseline
    print(f"checkpoint {ckpt_bytes / 2**20:.0f} MiB; peak RSS: baseline {baseline / 2**20:.0f} MiB, "
          f"converter {peak / 2**20:.0f} MiB")
    assert ckpt_bytes > 350 * 2**20
    # bounded by about one stacked expert tensor (we stream expert by expert, in 32 MiB chunks)
    assert extra < stacked_expert_tensor, f"converter used {extra / 2**20:.0f} MiB above baseline"
    assert (tmp_path / "out.gguf").is_file()
