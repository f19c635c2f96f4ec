"""Cache simulator: replay a routing trace through an `ExpertCache` and predict decode speed.

The replay drives the cache exactly as a decode step does (edge_moe/expert_cache.py):

    begin_token()
    for each layer:
        look up all k experts; pin the hits       (this layer's fills cannot evict them)
        admit the misses, ascending expert id     (np.unique order, as the executor does)
        unpin the hits
    end_token()

Prediction: edge_moe/cost_model.py's per-layer model. The replay knows each token's hits,
misses and fills per layer, so a token costs the sum over its layers of (fixed per-layer work +
max(this layer's CPU call, its GPU hits) + its fills' issue time), bounded below by the fills'
PCIe bytes and all DRAM bytes; a token that starts with every expert of the model cached is the
one-graph token (`MachineFigures.resident_token_seconds`, where the figures have one). Pinned
layers (`CacheConfig.pinned_layers`) are not looked up, as in the executor: their k experts
count as hits and the layers are priced as one graph (`MachineFigures.pinned_seconds`).
tok/s = 1 / mean t_token. The "no cache" baseline is every lookup a miss and no fills. A model
of the executor's loop, not a measurement: benchmarks/planner_accuracy.py compares the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_moe.cache_admission import AdmissionConfig, AdmissionPolicy, AdmissionRule, parse_admission_rule
from edge_moe.cost_model import MachineFigures
from edge_moe.expert_cache import CacheConfig, ExpertCache


def admission_config(rule: str | AdmissionRule, quota: int | None, machine: MachineFigures,
                     expert_bytes: int) -> AdmissionConfig:
    """An AdmissionConfig whose reuse rule (if chosen) uses the simulated machine's costs."""
    rule = rule if isinstance(rule, AdmissionRule) else parse_admission_rule(rule)
    cost = machine.cost_model(expert_bytes) if rule is AdmissionRule.REUSE else None
    return AdmissionConfig(rule=rule, max_fills_per_token=quota, cost=cost)


@dataclass(frozen=True)
class SimulationResult:
    # what was simulated
    n_layers: int
    n_experts: int
    k: int
    n_sets: int
    n_ways: int
    replace: str
    admission: str
    quota: int | None
    expert_bytes: int
    machine: MachineFigures
    # cache counters, over the whole trace
    tokens: int
    hits: int
    misses: int
    fills: int
    evictions: int
    declined: int  # the admission policy said no
    blocked: int  # every way of the set was pinned
    hit_rate: float
    hit_rate_by_layer: tuple[float, ...]
    # per token averages
    fills_per_token: float
    dram_bytes_per_token: float  # CPU misses + fills
    pcie_bytes_per_token: float  # fills
    cpu_miss_bytes_per_token: float  # misses
    seconds_per_token: float
    tokens_per_second: float
    # no cache: every lookup a CPU miss, no fills
    baseline_seconds_per_token: float
    baseline_tokens_per_second: float
    # the per-layer model's inputs, per token
    pinned_layers: int = 0  # the last ones, every expert cached, run as graphs
    cpu_calls_per_token: float = 0.0  # layers with at least one miss (one ggml call each)
    resident_tokens: int = 0  # tokens that began with every expert cached (one-graph tokens)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hit_rate_by_layer"] = list(self.hit_rate_by_layer)
        return out


def _check_trace(experts: np.ndarray, n_experts: int) -> np.ndarray:
    arr = np.asarray(experts)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"a routing trace is a non-empty [tokens, layers, k] array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expert ids must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_experts:
        raise ValueError(f"expert ids span {lo}..{hi}, outside 0..{n_experts - 1} "
                         "(a negative id marks a position the trace did not record)")
    return arr.astype(np.int64)


def simulate(experts: np.ndarray, config: CacheConfig, expert_bytes: int, n_experts: int,
             machine: MachineFigures, admission_policy: AdmissionPolicy | None = None) -> SimulationResult:
    """Replay `experts` [tokens, layers, k] through a cache built from `config`.

    `admission_policy` overrides the one `config.admission` would build (e.g. a custom rule).
    Raises ValueError on a malformed trace or a configuration the cache rejects.
    """
    trace = _check_trace(experts, n_experts)
    n_tokens, n_layers, k = trace.shape
    cache = ExpertCache(config, n_layers, n_experts, expert_bytes, admission_policy)
    first_pinned, pinned = cache.first_pinned, config.pinned_layers
    stats = cache.stats
    total_seconds = 0.0
    every_expert = n_layers * n_experts
    calls = resident_tokens = 0
    for token in trace.tolist():  # plain ints: the cache is pure Python
        resident = cache.n_cached == every_expert
        resident_tokens += resident
        layers = []  # (hits, misses, fills) per layer
        cache.begin_token()
        for layer, ids in enumerate(token[:first_pinned]):
            f0 = stats.fills
            hit_slots = []
            missed = set()
            for expert in ids:
                slot = cache.lookup(layer, expert)
                if slot is None:
                    missed.add(expert)
                else:
                    cache.pin(slot)
                    hit_slots.append(slot)
            for expert in sorted(missed):
                cache.admit(layer, expert)  # the simulator only counts; nothing to copy
            for slot in hit_slots:
                cache.unpin(slot)
            calls += bool(missed)
            layers.append((len(hit_slots), len(missed), stats.fills - f0))  # one ggml call: distinct misses
        for layer in range(first_pinned, n_layers):  # run as graphs: no lookups, every expert a hit
            stats.hits_by_layer[layer] += k
        cache.end_token()
        total_seconds += machine.token_seconds(layers, expert_bytes, resident, pinned, k, served=config.n_sets > 0)

    seconds = total_seconds / n_tokens
    baseline = machine.no_cache_seconds(n_layers, k, expert_bytes)
    by_layer = tuple(h / (h + m) if h + m else 0.0 for h, m in zip(stats.hits_by_layer, stats.misses_by_layer))
    adm = config.admission
    return SimulationResult(
        n_layers=n_layers, n_experts=n_experts, k=k, n_sets=config.n_sets, n_ways=config.n_ways,
        replace=config.replace.value, admission=adm.rule.value if admission_policy is None else
        type(admission_policy).__name__, quota=adm.max_fills_per_token if admission_policy is None else None,
        expert_bytes=expert_bytes, machine=machine,
        tokens=n_tokens, hits=stats.hits, misses=stats.misses, fills=stats.fills,
        evictions=stats.evictions, declined=stats.declined, blocked=stats.blocked,
        hit_rate=stats.hit_rate, hit_rate_by_layer=by_layer,
        fills_per_token=stats.fills / n_tokens,
        dram_bytes_per_token=stats.dram_bytes / n_tokens,
        pcie_bytes_per_token=stats.pcie_bytes / n_tokens,
        cpu_miss_bytes_per_token=stats.cpu_dram_bytes / n_tokens,
        seconds_per_token=seconds, tokens_per_second=1.0 / seconds,
        baseline_seconds_per_token=baseline, baseline_tokens_per_second=1.0 / baseline,
        cpu_calls_per_token=calls / n_tokens, resident_tokens=resident_tokens, pinned_layers=pinned,
    )


def format_report(result: SimulationResult) -> str:
    """A short human-readable summary of one simulation."""
    r = result
    mb = 1e6
    quota = "none" if r.quota is None else str(r.quota)
    layers = " ".join(f"{x:.2f}" for x in r.hit_rate_by_layer)
    m = r.machine
    rows = [
        ("trace", f"{r.tokens} tokens, {r.n_layers} layers, top-{r.k} of {r.n_experts} experts"),
        ("cache", f"{r.n_sets} sets x {r.n_ways} ways, {r.replace}, admission {r.admission}, quota {quota}"
                  + (f"; last {r.pinned_layers} layers pinned" if r.pinned_layers else "")),
        ("machine", f"DRAM {m.dram_gbps:g} GB/s, PCIe {m.pcie_gbps:g} GB/s, GPU expert "
                    f"{m.gpu_expert_seconds * 1e6:g} us, base {m.base_token_seconds * 1e3:g} ms, "
                    f"expert {r.expert_bytes / 2**20:.1f} MiB"),
        ("per layer us", f"{m.layer_seconds * 1e6:g} fixed, ggml call {m.cpu_call_seconds * 1e6:g}, "
                         f"GPU hits {m.gpu_layer_seconds * 1e6:g}, fill issue {m.fill_issue_seconds * 1e6:g}"
                         + ("" if m.resident_token_seconds is None else
                            f"; all cached {m.resident_token_seconds * 1e3:.2f} ms/token")),
        ("CPU calls", f"{r.cpu_calls_per_token:.1f}/token of {r.n_layers} layers; "
                      f"{r.resident_tokens} of {r.tokens} tokens with every expert cached"),
        ("hit rate", f"{r.hit_rate:.3f} ({r.hits} hits, {r.misses} misses)"),
        ("fills", f"{r.fills} ({r.fills_per_token:.2f}/token), {r.evictions} evictions, "
                  f"{r.declined} declined, {r.blocked} blocked"),
        ("DRAM MB/token", f"{r.dram_bytes_per_token / mb:.1f} (CPU misses {r.cpu_miss_bytes_per_token / mb:.1f} "
                          f"+ fills {r.pcie_bytes_per_token / mb:.1f})"),
        ("PCIe MB/token", f"{r.pcie_bytes_per_token / mb:.1f}"),
        ("predicted", f"{r.tokens_per_second:.2f} tok/s ({r.seconds_per_token * 1e3:.2f} ms/token)"),
        ("no cache", f"{r.baseline_tokens_per_second:.2f} tok/s ({r.baseline_seconds_per_token * 1e3:.2f} ms/token)"),
        ("hit rate/layer", layers),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

