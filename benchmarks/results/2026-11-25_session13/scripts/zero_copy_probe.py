"""Can the decode matvec kernels read missed experts straight from page-locked host memory (zero copy,
over PCIe) instead of copying them to a ring slot first? GPU time of one token's experts of a layer
(glu_pairs + scatter_pairs, the decode graphs' two launches) for s experts whose bytes sit in
device memory, or in pinned host memory (offsets relative to the device buffer), against a
cudaMemcpyAsync of the same bytes. Qwen3-30B-A3B and Mixtral Q4_0 shapes.

    PYTHONPATH=. python3 zero_copy_probe.py pinned|registered [contended]

pinned: torch pinned memory (cudaHostAlloc); registered: an anonymous numpy buffer registered as the
GGUF map is (edge_moe/host_register.py flags). contended: 8 threads sum a 4 GiB array meanwhile (DRAM
traffic as the CPU experts make). Needs _matvec_kernel's skip test on exactly -1 (session 13).
"""
import sys
import threading

import numpy as np
import torch

from edge_moe.host_register import RegisteredExperts

from edge_moe.quant_kernels import Q4_0
from edge_moe.quant_ops import QuantBuffer, QuantMatrix, glu_pairs, scatter_pairs

DEV = torch.device("cuda")
SHAPES = {"qwen3": (2048, 768), "mixtral": (4096, 14336)}


def fill_q4_0(t: torch.Tensor, rows: int, cols: int) -> None:
    b = t.view(-1, 18)
    b.random_(0, 256)
    b[:, :2] = torch.full((b.shape[0],), 0.001, dtype=torch.float16).view(torch.uint8).view(-1, 2).to(t.device)


def timed(fn, reps=30):
    for _ in range(3):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return float(np.median([a.elapsed_time(b) for a, b in ev])) * 1e3  # us


stop = threading.Event()
if "contended" in sys.argv:
    big = np.ones(1 << 29, dtype=np.float64)  # 4 GiB

    def churn(part):
        while not stop.is_set():
            part.sum()
    for i in range(8):
        threading.Thread(target=churn, args=(big[i << 26:(i + 1) << 26],),
                         daemon=True).start()
for name, (e, f) in SHAPES.items():
    mat = f * e // 32 * 18
    n_exp = 16
    stride = 3 * mat
    dev_buf = torch.empty(n_exp * stride, dtype=torch.uint8, device=DEV)
    if sys.argv[1] == "pinned":
        host = torch.empty(n_exp * stride, dtype=torch.uint8, pin_memory=True)
    else:
        arr = np.zeros(n_exp * stride, dtype=np.uint8)
        reg = RegisteredExperts([arr])  # noqa: F841 (kept alive)
        host = torch.from_numpy(arr)
    fill_q4_0(host, n_exp * 3, 1)
    dev_buf.copy_(host)
    buf = QuantBuffer(dev_buf)
    gate, down = QuantMatrix(Q4_0, f, e), QuantMatrix(Q4_0, e, f)
    x = torch.randn(1, e, device=DEV, dtype=torch.float16)
    w = torch.rand(16, device=DEV)
    base_delta = host.data_ptr() - dev_buf.data_ptr()
    for s in (1, 2, 4, 8):
        res = {}
        for where, delta in (("device", 0), ("host", base_delta)):
            ex = np.arange(s) * 2 % n_exp  # experts 0, 2, 4, ...: no two adjacent
            offs = torch.tensor(np.stack([ex * stride + delta, ex * stride + mat + delta, ex * stride + 2 * mat + delta,
                                          np.zeros(s), np.arange(s)]).astype(np.int64), device=DEV)
            y = torch.zeros(1, e, dtype=torch.float32, device=DEV)

            def call():
                act = glu_pairs(buf, gate, gate, offs[0], offs[1], x, offs[3])
                scatter_pairs(buf, down, offs[2], act, w, offs[4], offs[3], y)
            call()  # compiles
            y.zero_()
            call()
            if where == "device":
                y_dev = y.clone()
            else:
                same = torch.allclose(y, y_dev, rtol=1e-4, atol=1e-4 * y_dev.abs().max().item())
            g = torch.cuda.CUDAGraph()  # GPU time only: the launches replayed from a graph, 10 per replay
            with torch.cuda.graph(g):
                for _ in range(10):
                    call()
            res[where] = timed(g.replay) / 10
        dst = torch.empty(s * stride, dtype=torch.uint8, device=DEV)
        src = host[:s * stride]
        cp = timed(lambda: dst.copy_(src, non_blocking=True)) if sys.argv[1] == "pinned" else float("nan")
        mb = s * stride / 1e6
        print(f"{sys.argv[1:]} {name} {s} experts ({mb:.1f} MB): device {res['device']:8.1f} us  zero-copy host {res['host']:8.1f} us "
              f"({mb / res['host'] * 1e3:.1f} GB/s)  memcpy H2D {cp:8.1f} us ({mb / cp * 1e3:.1f} GB/s)  same result: {same}",
              flush=True)
stop.set()
