"""CUDA graphs by key, captured on first use: shared by the decode graphs (one token) and the
prefill graphs (an all-GPU prompt chunk).

`run(key, segment)` replays the graph of `key` if there is one. Otherwise it runs `segment`
eagerly (the work of this call: Triton compiles, cuBLAS and cuDNN choose their kernels), then
captures it for the next calls (a capture executes nothing). With capture=False (the CPU tests)
it always runs the segment eagerly. Nothing is evicted: the keys are few (shapes and buckets).

Every graph of one cache shares a memory pool: the segments' temporaries die inside their
graph, and segments never run concurrently. Captures run on a stream of torch's high-priority
pool, never torch.cuda.graph's default capture stream: that one comes from the same round-robin
pool of 32 streams as the expert store's fill stream (gpu_slots.SlotStore), and once enough
streams were handed out the two were the same CUDA stream; the fill thread's copies and events
then landed in a capture, and fills failed with "invalid argument" or hung (H100 box, the GPU
test sequence, session 9).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class GraphCache:
    def __init__(self, device: torch.device, capture: bool) -> None:
        if capture and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.capture = capture
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._stream = torch.cuda.Stream(device, priority=-1) if capture else None

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, segment: Callable[[], None]) -> None:
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        segment()
        if not self.capture:
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
            segment()  # recorded for the next calls, not executed
        self._graphs[key] = graph
