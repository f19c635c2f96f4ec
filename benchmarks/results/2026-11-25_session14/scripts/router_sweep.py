"""GPU time (graph-replayed) of route_pairs at the Qwen3 (128 x 2048, k 8) and Mixtral (8 x 4096, k 2)
shapes under (rows, warps), against F.linear + the old separate routing (cuBLAS GEMV alone)."""
import torch
import torch.nn.functional as F

import edge_moe.route_kernels as rk


def gpu_us(fn, n=50):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        g.replay()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) * 1e3 / 20 / n


for n_exp, emb, k in ((128, 2048, 8), (8, 4096, 2), (60, 2048, 4)):
    h = torch.randn(1, emb, device="cuda", dtype=torch.float16)
    routers = [torch.randn(n_exp, emb, device="cuda", dtype=torch.float16) for _ in range(48)]
    bases = torch.arange(n_exp, device="cuda", dtype=torch.int64) * 4096
    parts = torch.zeros(3, device="cuda", dtype=torch.int64)
    w = torch.zeros(1, k, device="cuda")
    ids = torch.zeros(1, k, device="cuda", dtype=torch.int64)
    pairs = torch.zeros(5, k, device="cuda", dtype=torch.int64)
    y = torch.zeros(1, emb, device="cuda")
    cur = [0]

    def lin():
        cur[0] = (cur[0] + 1) % 48
        F.linear(h, routers[cur[0]])

    print(f"{n_exp} x {emb}: F.linear alone {gpu_us(lin):.2f} us")
    for rows in (1, 2, 4):
        for warps in (1, 2, 4):
            rk.ROUTER_ROWS, rk.ROUTER_WARPS = rows, warps

            def fused():
                cur[0] = (cur[0] + 1) % 48
                rk.route_pairs(h, routers[cur[0]], k, True, 1.0, bases, parts, w, ids, pairs, clear=y)

            want = torch.topk(torch.softmax(F.linear(h, routers[0]).float(), -1), k).indices
            rk.route_pairs(h, routers[0], k, True, 1.0, bases, parts, w, ids, pairs, clear=y)
            ok = torch.equal(ids[0].sort().values, want[0].sort().values)
            print(f"  rows {rows} warps {warps}: {gpu_us(fused):.2f} us  ids ok {ok}", flush=True)
