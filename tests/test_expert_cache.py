"""The expert cache's bookkeeping (edge_moe/expert_cache.py) and admission (edge_moe/cache_admission.py).

Replacement order is checked against `ReferenceCache`, a list-based model written
independently of the implementation's clocks: per set, one list in recency order (LRU,
and LFU's tie-break) and one in fill order (FIFO). The trace replay cross-checks our LRU
against hit rates published with the trace (shared/traces/README.md) that we did not
produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_moe.cache_admission import (
    AdmissionConfig, AdmissionPolicy, AdmissionRule, AdmitAll, CostModel, QuotaAdmission, ReuseAdmission,
    build_admission, parse_admission_rule,
)
from edge_moe.expert_cache import (
    CacheConfig, ExpertCache, ReplacePolicy, parse_replace_policy, set_index,
)

TRACE = Path(__file__).parent / "data" / "mixtral-8x7b-instruct-humaneval.npz"
EXPERT_BYTES = 1000
# DRAM-bound costs shaped like DESIGN.md's Mixtral figures: a fill costs about one CPU miss.
DRAM_BOUND = CostModel(expert_bytes=99_000_000, dram_bandwidth=56e9, pcie_bandwidth=55e9,
                       gpu_seconds_per_expert=130e-6)
PROPERTY = settings(max_examples=200, deadline=None)


# ---- the reference model ------------------------------------------------------------------

@dataclass
class ReferenceSet:
    recency: list[tuple[int, int]] = field(default_factory=list)  # least recently used first
    fill_order: list[tuple[int, int]] = field(default_factory=list)  # filled earliest first
    uses: dict[tuple[int, int], int] = field(default_factory=dict)


class ReferenceCache:
    """What LRU, FIFO and LFU (ties by LRU) should evict, with pins, admitting every miss."""

    def __init__(self, n_sets: int, n_ways: int, policy: ReplacePolicy) -> None:
        self.n_sets, self.n_ways, self.policy = n_sets, n_ways, policy
        self.sets = [ReferenceSet() for _ in range(n_sets)]
        self.pins: dict[tuple[int, int], int] = {}

    def _set(self, key: tuple[int, int]) -> ReferenceSet:
        return self.sets[key[0] % self.n_sets]

    def lookup(self, key: tuple[int, int]) -> bool:
        s = self._set(key)
        if key not in s.uses:
            return False
        s.recency.remove(key)
        s.recency.append(key)
        s.uses[key] += 1
        return True

    def admit(self, key: tuple[int, int]) -> tuple[bool, tuple[int, int] | None]:
        """(filled, evicted)."""
        s = self._set(key)
        evicted = None
        if len(s.uses) == self.n_ways:
            unpinned = [k for k in s.recency if not self.pins.get(k)]
            if not unpinned:
                return False, None
            if self.policy is ReplacePolicy.LRU:
                evicted = unpinned[0]
            elif self.policy is ReplacePolicy.FIFO:
                evicted = next(k for k in s.fill_order if not self.pins.get(k))
            else:  # LFU: fewest uses, the least recently used of those
                fewest = min(s.uses[k] for k in unpinned)
                evicted = next(k for k in unpinned if s.uses[k] == fewest)
            s.recency.remove(evicted)
            s.fill_order.remove(evicted)
            del s.uses[evicted]
        s.recency.append(key)
        s.fill_order.append(key)
        s.uses[key] = 1
        return True, evicted

    def contents(self) -> set[tuple[int, int]]:
        return {k for s in self.sets for k in s.uses}


# ---- a driver shared by the property tests ------------------------------------------------

@st.composite
def geometries(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(n_layers, n_experts, n_sets, n_ways), small so that accesses repeat and sets overflow."""
    n_layers = draw(st.integers(1, 4))
    n_sets = draw(st.integers(1, n_layers))
    n_ways = draw(st.integers(1, 3))
    n_experts = draw(st.integers(max(1, -(-n_ways // -(-n_layers // n_sets))), n_ways + 3))
    return n_layers, n_experts, n_sets, n_ways


def operations(n_layers: int, n_experts: int) -> st.SearchStrategy[list[tuple]]:
    """Shrinkable op lists, or long random walks (hypothesis favours short, simple lists)."""
    access = st.tuples(st.just("access"), st.integers(0, n_layers - 1), st.integers(0, n_experts - 1))
    pin = st.tuples(st.just("pin"), st.integers(0, 1000))
    unpin = st.tuples(st.just("unpin"), st.integers(0, 1000))
    token = st.tuples(st.just("token"))
    listed = st.lists(st.one_of(access, access, access, access, access, pin, unpin, token), min_size=20, max_size=100)
    return st.one_of(listed, random_walks(n_layers, n_experts))


@st.composite
def random_walks(draw: st.DrawFn, n_layers: int, n_experts: int) -> list[tuple]:
    rng = draw(st.randoms(use_true_random=False))
    ops: list[tuple] = []
    for _ in range(draw(st.integers(40, 120))):
        r = rng.random()
        if r < 0.75:
            ops.append(("access", rng.randrange(n_layers), rng.randrange(n_experts)))
        elif r < 0.95:
            ops.append(("pin" if r < 0.85 else "unpin", rng.randrange(1000)))
        else:
            ops.append(("token",))
    return ops


def check_invariants(cache: ExpertCache, pinned: dict[int, int], lookups: int, admits: int) -> None:
    contents = cache.contents()
    keys = list(contents.values())
    assert len(keys) == len(set(keys)), "an expert is cached twice"
    per_set: dict[int, int] = {}
    for slot, (layer, expert) in contents.items():
        assert cache.set_of_slot(slot) == set_index(layer, cache.n_sets), "expert in the wrong set"
        per_set[cache.set_of_slot(slot)] = per_set.get(cache.set_of_slot(slot), 0) + 1
        assert (layer, expert) in cache
    assert all(n <= cache.n_ways for n in per_set.values())
    assert len(contents) <= cache.n_slots
    for slot, n in pinned.items():
        assert n == 0 or slot in contents, "a pinned slot was emptied"
        assert cache.is_pinned(slot) == (n > 0)
    stats = cache.stats
    assert stats.hits + stats.misses == lookups
    assert stats.fills <= stats.misses
    assert stats.fills + stats.declined + stats.blocked == admits
    assert stats.evictions <= stats.fills
    assert len(contents) == stats.fills + stats.preloads - stats.evictions
    assert stats.dram_bytes == (stats.misses + stats.fills) * EXPERT_BYTES


def drive(cache: ExpertCache, ops: list[tuple], reference: ReferenceCache | None = None) -> list:
    """Run `ops`, admitting every miss; check invariants (and the reference) after each step."""
    pinned: dict[int, int] = {}
    lookups = admits = 0
    trail = []
    cache.begin_token()
    for op in ops:
        if op[0] == "access":
            key = (op[1], op[2])
            before = cache.contents()
            slot = cache.lookup(*key)
            lookups += 1
            if reference is not None:
                assert (slot is not None) == reference.lookup(key)
            if slot is not None:
                assert before[slot] == key
                trail.append(("hit", slot))
            else:
                decision = cache.admit(*key)
                admits += 1
                trail.append(("fill", decision))
                if decision is not None:
                    assert decision.evicted is None or decision.evicted == before.get(decision.slot)
                    assert decision.evicted is None or pinned.get(decision.slot, 0) == 0, "evicted a pinned slot"
                    assert cache.contents()[decision.slot] == key
                if reference is not None:
                    filled, evicted = reference.admit(key)
                    assert (decision is not None) == filled
                    if decision is not None:
                        assert decision.evicted == evicted
        elif op[0] == "pin":
            occupied = sorted(cache.contents())
            if occupied:
                slot = occupied[op[1] % len(occupied)]
                cache.pin(slot)
                pinned[slot] = pinned.get(slot, 0) + 1
                if reference is not None:
                    key = cache.contents()[slot]
                    reference.pins[key] = reference.pins.get(key, 0) + 1
        elif op[0] == "unpin":
            held = sorted(s for s, n in pinned.items() if n)
            if held:
                slot = held[op[1] % len(held)]
                cache.unpin(slot)
                pinned[slot] -= 1
                if reference is not None:
                    reference.pins[cache.contents()[slot]] -= 1
        else:
            cache.end_token()
            cache.begin_token()
        check_invariants(cache, pinned, lookups, admits)
        if reference is not None:
            assert set(cache.contents().values()) == reference.contents()
    return trail


# ---- replacement policies -----------------------------------------------------------------

@PROPERTY
@given(data=st.data(), policy=st.sampled_from([ReplacePolicy.LRU, ReplacePolicy.FIFO, ReplacePolicy.LFU]))
def test_replacement_matches_reference_model(data: st.DataObject, policy: ReplacePolicy) -> None:
    n_layers, n_experts, n_sets, n_ways = data.draw(geometries())
    cache = ExpertCache(CacheConfig(n_sets, n_ways, policy), n_layers, n_experts, EXPERT_BYTES)
    drive(cache, data.draw(operations(n_layers, n_experts)), ReferenceCache(n_sets, n_ways, policy))


@PROPERTY
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_policy_keeps_invariants_and_is_reproducible(data: st.DataObject, seed: int) -> None:
    n_layers, n_experts, n_sets, n_ways = data.draw(geometries())
    ops = data.draw(operations(n_layers, n_experts))
    config = CacheConfig(n_sets, n_ways, ReplacePolicy.RANDOM, seed=seed)
    first = drive(ExpertCache(config, n_layers, n_experts, EXPERT_BYTES), ops)
    again = drive(ExpertCache(config, n_layers, n_experts, EXPERT_BYTES), ops)
    assert first == again


@PROPERTY
@given(data=st.data(), policy=st.sampled_from(list(ReplacePolicy)),
       rule=st.sampled_from(["quota", "reuse", "quota+reuse"]))
def test_invariants_hold_under_every_admission_policy(data: st.DataObject, policy: ReplacePolicy, rule: str) -> None:
    n_layers, n_experts, n_sets, n_ways = data.draw(geometries())
    cost = CostModel(EXPERT_BYTES, dram_bandwidth=1.0, pcie_bandwidth=1.0, gpu_seconds_per_expert=0.0)
    admission = AdmissionConfig(rule=AdmissionRule.REUSE if "reuse" in rule else AdmissionRule.ALL,
                                max_fills_per_token=data.draw(st.integers(0, 3)) if "quota" in rule else None,
                                cost=cost)
    cache = ExpertCache(CacheConfig(n_sets, n_ways, policy, admission), n_layers, n_experts, EXPERT_BYTES)
    drive(cache, data.draw(operations(n_layers, n_experts)))


def test_lru_fifo_lfu_pick_different_victims() -> None:
    """One set of 3 ways holding a, b, c (filled in that order); a is then used twice, b once."""
    victims = {}
    for policy in (ReplacePolicy.LRU, ReplacePolicy.FIFO, ReplacePolicy.LFU):
        cache = ExpertCache(CacheConfig(1, 3, policy), 1, 8, EXPERT_BYTES)
        for e in (0, 1, 2):
            assert cache.lookup(0, e) is None
            cache.admit(0, e)
        for e in (0, 0, 1, 2, 1):
            assert cache.lookup(0, e) is not None
        assert cache.lookup(0, 5) is None
        victims[policy] = cache.admit(0, 5).evicted
    # recency: 0 < 2 < 1; fill order: 0 < 1 < 2; uses: 0 -> 3, 1 -> 3, 2 -> 2
    assert victims == {ReplacePolicy.LRU: (0, 0), ReplacePolicy.FIFO: (0, 0), ReplacePolicy.LFU: (0, 2)}


def test_every_way_pinned_blocks_admission() -> None:
    cache = ExpertCache(CacheConfig(1, 2), 1, 8, EXPERT_BYTES)
    slots = [cache.admit(0, e).slot for e in (0, 1)]
    for slot in slots:
        cache.pin(slot)
    assert cache.admit(0, 2) is None
    assert cache.stats.blocked == 1 and cache.stats.declined == 0
    cache.unpin(slots[1])
    decision = cache.admit(0, 2)
    assert decision is not None and decision.slot == slots[1] and decision.evicted == (0, 1)


def test_pin_errors() -> None:
    cache = ExpertCache(CacheConfig(1, 2), 1, 8, EXPERT_BYTES)
    with pytest.raises(ValueError, match="empty"):
        cache.pin(0)
    with pytest.raises(ValueError, match="not pinned"):
        cache.unpin(0)
    with pytest.raises(ValueError, match="outside"):
        cache.pin(2)
    cache.admit(0, 3)
    with pytest.raises(ValueError, match="already cached"):
        cache.admit(0, 3)
    with pytest.raises(ValueError, match="outside the model"):
        cache.lookup(1, 0)


def test_preload_places_without_fills_and_never_evicts() -> None:
    cache = ExpertCache(CacheConfig(2, 2), 4, 8, EXPERT_BYTES)
    decisions = cache.preload([(0, 1), (2, 5), (1, 7)])
    assert [cache.set_of_slot(d.slot) for d in decisions] == [0, 0, 1]
    assert sorted(cache.contents().values()) == [(0, 1), (1, 7), (2, 5)]
    assert cache.stats.preloads == 3 and cache.stats.fills == 0
    assert cache.lookup(2, 5) == decisions[1].slot
    with pytest.raises(ValueError, match="no empty way"):
        cache.preload([(2, 6)])
    with pytest.raises(ValueError, match="twice"):
        cache.preload([(1, 7)])


def test_stats_per_layer_and_bytes() -> None:
    cache = ExpertCache(CacheConfig(2, 1), 2, 4, EXPERT_BYTES)
    for layer, expert in [(0, 0), (0, 0), (1, 2), (1, 3), (1, 3)]:
        if cache.lookup(layer, expert) is None:
            cache.admit(layer, expert)
    s = cache.stats
    assert (s.hits_by_layer, s.misses_by_layer, s.fills_by_layer, s.evictions_by_layer) == \
        ([1, 1], [1, 2], [1, 2], [0, 1])
    assert s.hit_rate == pytest.approx(2 / 5)
    assert (s.pcie_bytes, s.cpu_dram_bytes, s.dram_bytes) == (3000, 3000, 6000)
    cache.reset_stats()
    assert cache.stats.lookups == 0 and len(cache.contents()) == 2


# ---- the set-index function and geometry --------------------------------------------------

@given(n_layers=st.integers(1, 96), n_sets=st.integers(1, 96))
def test_set_index_is_the_papers_mapping_or_covers_every_layer(n_layers: int, n_sets: int) -> None:
    sets = [set_index(layer, n_sets) for layer in range(n_layers)]
    assert all(0 <= s < n_sets for s in sets)
    if n_sets >= n_layers:
        assert sets == list(range(n_layers))  # the paper: layer i -> set i
    else:
        assert set(sets) == set(range(n_sets))  # every set used, every layer covered
        cache = ExpertCache(CacheConfig(n_sets, 1), n_layers, 8, EXPERT_BYTES)
        covered = sorted(layer for s in range(n_sets) for layer in cache.layers_of_set(s))
        assert covered == list(range(n_layers))
        for layer in range(n_layers):
            assert cache.lookup(layer, 0) is None
            assert cache.admit(layer, 0) is not None  # every layer can be cached


def test_geometry_validation() -> None:
    with pytest.raises(ValueError, match="never be used"):
        ExpertCache(CacheConfig(33, 2), 32, 8, EXPERT_BYTES)
    with pytest.raises(ValueError, match="--cache-nways at most 8"):
        ExpertCache(CacheConfig(32, 9), 32, 8, EXPERT_BYTES)
    with pytest.raises(ValueError, match="at least one set"):
        CacheConfig(0, 1)
    with pytest.raises(ValueError, match="at least one way"):
        CacheConfig(1, 0)
    with pytest.raises(ValueError, match="LRU|FIFO|LFU|random"):
        CacheConfig(1, 1, "MRU")  # type: ignore[arg-type]
    assert CacheConfig(1, 1, "lru").replace is ReplacePolicy.LRU  # type: ignore[arg-type]
    assert parse_replace_policy("Random") is ReplacePolicy.RANDOM
    assert parse_admission_rule("REUSE") is AdmissionRule.REUSE


# ---- sizing from a GPU budget -------------------------------------------------------------

def test_from_budget_one_set_per_layer_when_slots_divide() -> None:
    eb = 99_000_000
    cfg = CacheConfig.from_budget(32 * 4 * eb + 2 * eb + eb - 1, eb, n_layers=32, n_experts=8)
    assert (cfg.n_sets, cfg.n_ways) == (32, 4)  # 130 slots: 2 left over is within 2%
    assert (cfg.replace, cfg.admission) == (ReplacePolicy.LRU, AdmissionConfig())


def test_from_budget_shares_sets_rather_than_leave_slots_unused() -> None:
    eb = 99_000_000
    cfg = CacheConfig.from_budget(8 * 2**30, eb, n_layers=32, n_experts=8)
    assert cfg.n_slots == 86 and (cfg.n_sets, cfg.n_ways) == (2, 43)  # 32 x 2 would leave 22 unused
    cfg = CacheConfig.from_budget(32 * 4 * eb + 5 * eb, eb, n_layers=32, n_experts=8)
    assert (cfg.n_sets, cfg.n_ways) == (4, 33)  # 133 slots: 4 sets leave 1 (32 sets would leave 5)
    cfg = CacheConfig.from_budget(48 * 68 * eb + 30 * eb, eb, n_layers=48, n_experts=128)
    assert cfg.n_slots >= 48 * 68 + 30 - 66 and 48 % cfg.n_sets == 0


def test_from_budget_caps_ways_at_the_experts_of_a_layer() -> None:
    cfg = CacheConfig.from_budget(10**15, 1000, n_layers=4, n_experts=8)
    assert (cfg.n_sets, cfg.n_ways) == (4, 8)


def test_from_budget_smaller_than_one_expert_per_layer_shares_sets() -> None:
    cfg = CacheConfig.from_budget(10 * 1000 + 999, 1000, n_layers=32, n_experts=8)
    assert (cfg.n_sets, cfg.n_ways) == (10, 1)
    cache = ExpertCache(cfg, 32, 8, 1000)
    assert sorted(layer for s in range(10) for layer in cache.layers_of_set(s)) == list(range(32))
    with pytest.raises(ValueError, match="holds no expert"):
        CacheConfig.from_budget(999, 1000, n_layers=32, n_experts=8)


# ---- admission policies -------------------------------------------------------------------

def test_admit_all() -> None:
    assert AdmitAll().should_admit(0, 0, None) and AdmitAll().should_admit(0, 0, (0, 1))


def test_quota_stops_after_k_fills_per_token() -> None:
    cache = ExpertCache(CacheConfig(4, 8, admission=AdmissionConfig(max_fills_per_token=3)), 4, 8, EXPERT_BYTES)
    for token in range(2):
        cache.begin_token()
        filled = []
        for layer in range(4):
            for expert in (2 * token, 2 * token + 1):
                assert cache.lookup(layer, expert) is None
                filled.append(cache.admit(layer, expert) is not None)
        cache.end_token()
        assert filled == [True] * 3 + [False] * 5  # first come, first served in layer order
    assert cache.stats.fills == 6 and cache.stats.declined == 10


def test_quota_zero_never_fills_and_wraps_its_inner_rule() -> None:
    quota = QuotaAdmission(0)
    quota.begin_token()
    assert not quota.should_admit(0, 0, None)
    policy = build_admission(AdmissionConfig(rule="reuse", max_fills_per_token=2, cost=DRAM_BOUND))
    assert isinstance(policy, QuotaAdmission) and isinstance(policy.inner, ReuseAdmission)


def test_reuse_admits_hot_experts_and_declines_one_offs() -> None:
    assert 1.0 < DRAM_BOUND.break_even_uses < 1.2  # a fill costs about one CPU miss
    cache = ExpertCache(CacheConfig(1, 1, admission=AdmissionConfig(rule="reuse", cost=DRAM_BOUND)),
                        1, 8, DRAM_BOUND.expert_bytes)
    decisions = []
    for token in range(6):  # expert 0 every token, experts 1..6 once each
        cache.begin_token()
        for expert in (0, token + 1):
            if cache.lookup(0, expert) is None:
                decisions.append((expert, cache.admit(0, expert) is not None))
        cache.end_token()
    assert decisions[:3] == [(0, False), (1, False), (0, True)]  # hot: admitted on its second use
    assert all(not admitted for expert, admitted in decisions[3:])  # one-offs never evict it
    assert 0 not in {d[0] for d in decisions[3:]}  # and expert 0 hits from then on
    assert cache.stats.hits == 4


def test_reuse_weighs_the_victim_and_forgets_with_decay() -> None:
    policy = ReuseAdmission(DRAM_BOUND, decay=0.5)
    for _ in range(3):
        policy.observe(0, 0)  # victim: 3 recent uses
        policy.observe(0, 1)  # candidate: 3 uses too
    assert not policy.should_admit(0, 1, victim=(0, 0))  # no net gain
    assert policy.should_admit(0, 1, victim=None)  # 3 expected uses pay for an empty way
    for _ in range(3):
        policy.end_token()
    assert policy.expected_uses(0, 1) == pytest.approx(3 * 0.5**3)
    assert not policy.should_admit(0, 1, victim=None)  # it went cold


def test_reuse_never_admits_when_the_gpu_is_no_faster() -> None:
    slow_gpu = CostModel(1000, dram_bandwidth=1e9, pcie_bandwidth=1e9, gpu_seconds_per_expert=1e-6)
    assert math.isinf(slow_gpu.break_even_uses)
    policy = ReuseAdmission(slow_gpu)
    for _ in range(50):
        policy.observe(0, 0)
    assert not policy.should_admit(0, 0, None)


def test_admission_config_validation() -> None:
    with pytest.raises(ValueError, match="needs a CostModel"):
        AdmissionConfig(rule=AdmissionRule.REUSE)
    with pytest.raises(ValueError, match="decay"):
        AdmissionConfig(decay=1.0)
    with pytest.raises(ValueError, match="quota"):
        AdmissionConfig(max_fills_per_token=-1)
    with pytest.raises(ValueError, match="unknown admission rule"):
        AdmissionConfig(rule="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dram_bandwidth"):
        CostModel(1000, dram_bandwidth=0.0, pcie_bandwidth=1.0, gpu_seconds_per_expert=0.0)
    with pytest.raises(ValueError, match="expert_bytes"):
        CostModel(0, dram_bandwidth=1.0, pcie_bandwidth=1.0, gpu_seconds_per_expert=0.0)


# ---- replaying real routing -----------------------------------------------------------------

def replay(experts: np.ndarray, config: CacheConfig, layer_step: bool, n_experts: int = 8) -> ExpertCache:
    """Route a trace [tokens, layers, k] through a cache, admitting misses as the policy says.

    layer_step=False: access by access (lookup, then admit on a miss), the convention of
    the trace README's table. layer_step=True: as the executor will, all k lookups of a
    layer first, hits pinned, then the misses admitted.
    """
    n_layers = experts.shape[1]
    cache = ExpertCache(config, n_layers, n_experts, EXPERT_BYTES)
    for token in experts.tolist():
        cache.begin_token()
        for layer, chosen in enumerate(token):
            if not layer_step:
                for expert in chosen:
                    if cache.lookup(layer, expert) is None:
                        cache.admit(layer, expert)
                continue
            slots = [cache.lookup(layer, expert) for expert in chosen]
            pinned = [s for s in slots if s is not None]
            for s in pinned:
                cache.pin(s)
            for expert, slot in zip(chosen, slots):
                if slot is None and (decision := cache.admit(layer, expert)) is not None:
                    cache.pin(decision.slot)
                    pinned.append(decision.slot)
            for s in pinned:
                cache.unpin(s)
        cache.end_token()
    return cache


@pytest.fixture(scope="module")
def trace() -> dict[str, np.ndarray]:
    with np.load(TRACE) as data:
        return {k: data[k] for k in data.files}


# The README gives 0.30-0.35, 0.57-0.61 and 0.80, rounded to two decimals.
@pytest.mark.parametrize("ways, low, high", [(2, 0.295, 0.355), (4, 0.57, 0.61), (6, 0.795, 0.805)])
def test_lru_replay_matches_the_published_hit_rates(trace: dict[str, np.ndarray], ways: int,
                                                    low: float, high: float) -> None:
    for problem in ("experts_0", "experts_1"):
        cache = replay(trace[problem], CacheConfig(32, ways, ReplacePolicy.LRU), layer_step=False)
        assert low <= cache.stats.hit_rate <= high, (problem, cache.stats.hit_rate)


def test_reuse_admission_reads_fewer_dram_bytes_than_admit_all(trace: dict[str, np.ndarray]) -> None:
    reuse = AdmissionConfig(rule=AdmissionRule.REUSE, cost=DRAM_BOUND)
    for problem in ("experts_0", "experts_1"):
        every = replay(trace[problem], CacheConfig(32, 4), layer_step=True).stats
        chosen = replay(trace[problem], CacheConfig(32, 4, admission=reuse), layer_step=True).stats
        assert chosen.dram_bytes < 0.8 * every.dram_bytes
        assert chosen.hit_rate > 0.9 * every.hit_rate


class _Recorder(AdmissionPolicy):
    """Admits everything and records the hooks' order (checks the cache calls them as documented)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def observe(self, layer: int, expert: int) -> None:
        self.calls.append(f"observe {layer}.{expert}")

    def should_admit(self, layer: int, expert: int, victim: tuple[int, int] | None) -> bool:
        self.calls.append(f"ask {layer}.{expert} victim={victim}")
        return True

    def record_fill(self, layer: int, expert: int) -> None:
        self.calls.append(f"fill {layer}.{expert}")

    def begin_token(self) -> None:
        self.calls.append("begin")

    def end_token(self) -> None:
        self.calls.append("end")


def test_hooks_reach_the_admission_policy_in_order() -> None:
    recorder = _Recorder()
    cache = ExpertCache(CacheConfig(1, 1), 1, 4, EXPERT_BYTES, admission=recorder)
    cache.begin_token()
    cache.lookup(0, 1)
    cache.admit(0, 1)
    cache.lookup(0, 2)
    cache.admit(0, 2)
    cache.end_token()
    assert recorder.calls == ["begin", "observe 0.1", "ask 0.1 victim=None", "fill 0.1",
                              "observe 0.2", "ask 0.2 victim=(0, 1)", "fill 0.2", "end"]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_lookup_and_pin_is_lookup_then_pin(data: st.DataObject) -> None:
    """The executor's batched call behaves exactly as one lookup (and pin of a hit) per expert."""
    cfg = CacheConfig(2, 3, data.draw(st.sampled_from(["LRU", "FIFO", "LFU"])))
    one, batched = (ExpertCache(cfg, 4, 6, 100) for _ in range(2))
    for _ in range(data.draw(st.integers(1, 12))):
        layer = data.draw(st.integers(0, 3))
        experts = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
        expected = []
        for e in experts:
            slot = one.lookup(layer, e)
            if slot is not None:
                one.pin(slot)
            expected.append(-1 if slot is None else slot)
        got = batched.lookup_and_pin(layer, experts)
        assert got == expected
        for cache, slots in ((one, expected), (batched, got)):
            for e, s in zip(experts, slots):
                if s < 0:
                    cache.admit(layer, e)
            cache.unpin_many(s for s in slots if s >= 0)
    assert one.stats.hits_by_layer == batched.stats.hits_by_layer
    assert one.stats.misses_by_layer == batched.stats.misses_by_layer
    assert one.contents() == batched.contents()
    with pytest.raises(ValueError):
        batched.lookup_and_pin(0, [6])


# Fills look cheap next to CPU misses (as measured on the H100 machine for Qwen3-sized experts:
# a miss ~4x a fill): the count rule alone then chases noise when routing has no locality.
CHEAP_FILLS = CostModel(expert_bytes=2_650_000, dram_bandwidth=12e9, pcie_bandwidth=49e9,
                        gpu_seconds_per_expert=20e-6)


def _route_as_the_executor(cache: ExpertCache, experts: np.ndarray) -> None:
    """Tokens [T, layers, k] through the cache as the executor does: a layer's lookups (hits
    pinned), then its misses offered to admission, then the hits unpinned."""
    for token in experts.tolist():
        cache.begin_token()
        for layer, chosen in enumerate(token):
            slots = cache.lookup_and_pin(layer, chosen)
            for expert, slot in zip(chosen, slots):
                if slot < 0:
                    cache.admit(layer, expert)
            cache.unpin_many(s for s in slots if s >= 0)
        cache.end_token()


def test_validation_stops_fills_that_bring_nothing() -> None:
    """Uniform routing (no temporal locality, as random weights route): unchecked, the count
    rule fills on many misses; validated, it sees the fills' net hits are ~0 and nearly stops,
    at the same hit rate (which is the cached fraction either way)."""
    rng = np.random.default_rng(0)
    experts = np.stack([np.stack([rng.choice(128, 8, replace=False) for _ in range(4)]) for _ in range(300)])
    runs = {}
    for validate in (False, True):
        config = CacheConfig(4, 68, admission=AdmissionConfig(rule=AdmissionRule.REUSE, cost=CHEAP_FILLS))
        cache = ExpertCache(config, 4, 128, EXPERT_BYTES)
        assert isinstance(cache.admission, ReuseAdmission)
        cache.admission.validate = validate
        _route_as_the_executor(cache, experts)
        runs[validate] = cache
    loose, checked = runs[False].stats, runs[True].stats
    print(f"evicting fills/token {loose.evictions / 300:.2f} -> {checked.evictions / 300:.2f}, "
          f"hit rate {loose.hit_rate:.3f} -> {checked.hit_rate:.3f}, "
          f"net hits per judged fill {runs[True].admission.net_hits / runs[True].admission.checked:.2f}")
    # fills into empty ways (the warm-up, 4 x 68) are free of losses: only evictions are judged
    assert loose.evictions > 2 * 300  # the unchecked rule churns (> 2 evicting fills per token)
    assert checked.evictions < 0.25 * loose.evictions
    assert checked.hit_rate > loose.hit_rate - 0.03


def test_validation_keeps_fills_that_pay(trace: dict[str, np.ndarray]) -> None:
    """Real Mixtral routing has locality: validated admission keeps (nearly) the hit rate."""
    for problem in ("experts_0", "experts_1"):
        rates = {}
        for validate in (False, True):
            admission = AdmissionConfig(rule=AdmissionRule.REUSE, cost=CHEAP_FILLS)
            cache = ExpertCache(CacheConfig(32, 4, admission=admission), 32, 8, EXPERT_BYTES)
            cache.admission.validate = validate  # type: ignore[attr-defined]
            _route_as_the_executor(cache, trace[problem])
            rates[validate] = (cache.stats.hit_rate, cache.stats.fills)
        print(problem, rates)
        assert rates[True][0] > 0.95 * rates[False][0]


def test_validation_accounting_by_hand() -> None:
    """One fill: the newcomer hits 3 times, the evicted victim comes back twice -> net 1."""
    policy = ReuseAdmission(CHEAP_FILLS, validate=True, horizon=5)
    for _ in range(3):  # make expert 1 hot enough to be admitted over victim 0
        policy.observe(0, 1)
    assert policy.should_admit(0, 1, (0, 0))
    policy.record_fill(0, 1)
    for _ in range(3):
        policy.observe(0, 1)  # hits of the newcomer
    policy.observe(0, 0)
    policy.observe(0, 0)  # the victim returns: lost hits
    for _ in range(5):
        policy.end_token()
    assert policy.checked == 1 and policy.net_hits == 1.0


def test_validation_mean_forgets_with_a_half_life() -> None:
    """Two judged fills, net +1 then -1, half_life 1: the older one counts half."""
    policy = ReuseAdmission(CHEAP_FILLS, horizon=1, half_life=1.0)
    for _ in range(3):
        policy.observe(0, 1)
    assert policy.should_admit(0, 1, (0, 0))
    policy.record_fill(0, 1)
    for _ in range(3):
        policy.observe(0, 1)  # gained 3
    policy.observe(0, 0)
    policy.observe(0, 0)  # lost 2
    policy.end_token()  # judged: net +1
    for _ in range(10):
        policy.observe(0, 2)
    assert policy.should_admit(0, 2, (0, 1))
    policy.record_fill(0, 2)
    policy.observe(0, 1)  # the victim returns, the newcomer never hits: net -1
    policy.end_token()
    assert policy.checked == 2 and policy.net_hits == 0.0  # whole-run totals
    assert policy.recent_checked == pytest.approx(1.5) and policy.recent_net_hits == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="half_life"):
        ReuseAdmission(CHEAP_FILLS, half_life=0.0)


def _run_steps(cache: ExpertCache, steps: list[list[list[int]]]) -> tuple[list[int], list[int], list[bool]]:
    """Steps [layers][ids] through the cache as gpu_experts.py does (a prefill chunk is one step
    of many ids; its distinct misses are offered in ascending order). Per step: fills, hits, and
    whether the reuse rule's validation said fills pay at the step's end."""
    fills, hits, pays = [], [], []
    for step in steps:
        f0, h0 = cache.stats.fills, cache.stats.hits
        cache.begin_token()
        for layer, ids in enumerate(step):
            slots = cache.lookup_and_pin(layer, ids)
            for expert in sorted({e for e, s in zip(ids, slots) if s < 0}):
                cache.admit(layer, expert)
            cache.unpin_many(s for s in slots if s >= 0)
        cache.end_token()
        fills.append(cache.stats.fills - f0)
        hits.append(cache.stats.hits - h0)
        pays.append(cache.admission.fills_pay())  # type: ignore[attr-defined]
    return fills, hits, pays


def _uniform_steps(rng: np.random.Generator, n: int, layers: int, experts: int, k: int) -> list[list[list[int]]]:
    return [[rng.choice(experts, k, replace=False).tolist() for _ in range(layers)] for _ in range(n)]


def test_validation_follows_a_phase_change_from_paying_to_uniform() -> None:
    """Prefill-like chunks (64 tokens each, routed mostly to a hot set per layer: each fill gains
    dozens of hits), then uniform decode (fills gain nothing). The whole-run mean stays above
    break-even and keeps admitting freely; the decayed mean stops within ~150 tokens and then
    only explores (one candidate in 16)."""
    layers, experts, k, ways = 8, 64, 4, 16
    rng = np.random.default_rng(0)
    hot = [rng.choice(experts, ways, replace=False) for _ in range(layers)]
    prefill = [[[int(e) for _ in range(64) for e in rng.choice(hot[layer] if rng.random() < 0.9 else experts,
                                                               k, replace=False)]
                for layer in range(layers)] for _ in range(8)]
    steps = prefill + _uniform_steps(rng, 300, layers, experts, k)
    runs = {}
    for half_life in (64.0, math.inf):  # math.inf: the whole-run mean (the rule before decay)
        policy = ReuseAdmission(CHEAP_FILLS, half_life=half_life)
        cache = ExpertCache(CacheConfig(layers, ways), layers, experts, EXPERT_BYTES, admission=policy)
        runs[half_life] = _run_steps(cache, steps)
    late = slice(8 + 200, None)  # decode tokens 200..299
    decayed, whole = (np.mean(runs[h][0][late]) for h in (64.0, math.inf))
    print(f"fills/token in decode tokens 200-299: decayed {decayed:.2f}, whole-run mean {whole:.2f}")
    assert not any(runs[64.0][2][8 + 160:])  # no verdict of "fills pay" after decode token 160
    assert decayed < 1.5  # exploring only (~1 fill per token here)
    assert all(runs[math.inf][2][late]) and whole > 3 * decayed  # the whole-run mean still admits freely


def test_validation_recovers_when_routing_turns_local() -> None:
    """A long uniform phase (fills do not pay: exploring only), then local routing (a hot set
    per layer of `ways` experts, one of them replaced with probability 0.3 per token): the
    decayed mean says fills pay again within ~the validation horizon (40 tokens) plus a few
    judgements, the whole-run mean only after hundreds of tokens, at a lower hit rate meanwhile."""
    layers, experts, k, ways = 8, 64, 4, 8
    rng = np.random.default_rng(0)
    steps = _uniform_steps(rng, 1500, layers, experts, k)
    hot = [rng.choice(experts, ways, replace=False).tolist() for _ in range(layers)]
    for _ in range(200):
        for layer in range(layers):
            if rng.random() < 0.3:  # drift: a cold expert takes a hot one's place
                cold = [e for e in range(experts) if e not in hot[layer]]
                hot[layer][rng.integers(ways)] = int(rng.choice(cold))
        steps.append([rng.choice(hot[layer], k, replace=False).tolist() for layer in range(layers)])
    runs = {}
    for half_life in (64.0, math.inf):
        policy = ReuseAdmission(CHEAP_FILLS, half_life=half_life)
        cache = ExpertCache(CacheConfig(layers, ways), layers, experts, EXPERT_BYTES, admission=policy)
        runs[half_life] = _run_steps(cache, steps)
    assert not any(runs[64.0][2][1400:1500])  # the uniform phase was judged as not paying
    assert all(runs[64.0][2][1500 + 80:])  # fills pay from local token 80 on
    assert not any(runs[math.inf][2][1500:1500 + 150])  # the whole-run mean still refuses
    late = slice(1500 + 80, 1500 + 150)
    decayed, whole = (np.sum(runs[h][1][late]) / (70 * layers * k) for h in (64.0, math.inf))
    print(f"hit rate in local tokens 80-149: decayed {decayed:.2f}, whole-run mean {whole:.2f}")
    assert decayed > whole + 0.15


def test_pinned_layers_hold_every_expert_after_the_sets() -> None:
    # 4 layers x 3 experts; layers 2-3 pinned; layers 0-1 share 1 set of 2 ways
    cache = ExpertCache(CacheConfig(1, 2, pinned_layers=2), 4, 3, 100)
    assert cache.n_slots == 2 + 2 * 3 and cache.first_pinned == 2 and cache.n_cached == 6
    assert cache.stats.preloads == 6
    assert [d.slot for d in cache.pinned_contents()] == list(range(2, 8))
    assert cache.lookup(3, 1) == 2 + 3 + 1 and cache.lookup(2, 0) == 2
    assert cache.is_pinned_layer(2) and not cache.is_pinned_layer(1)
    assert list(cache.layers_of_set(0)) == [0, 1]
    # the sets serve the other layers: fills land in slots 0-1 and evict only there
    assert cache.lookup(0, 0) is None
    assert cache.admit(0, 0).slot in (0, 1)
    assert cache.admit(1, 2).slot in (0, 1)
    d = cache.admit(0, 1)
    assert d is not None and d.slot in (0, 1) and d.evicted is not None and d.evicted[0] in (0, 1)
    assert cache.n_cached == 8
    with pytest.raises(ValueError, match="pinned"):
        cache.preload([(3, 0)])


def test_pinned_layers_without_sets() -> None:
    cache = ExpertCache(CacheConfig(0, 0, pinned_layers=1), 3, 4, 100)
    assert cache.n_slots == 4 and cache.lookup(2, 3) == 3
    assert cache.lookup(0, 1) is None and cache.admit(0, 1) is None  # no slot for layers 0-1
    assert cache.stats.fills == 0 and cache.stats.misses == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_sets=0, n_ways=0), "at least one set"),
    (dict(n_sets=1, n_ways=1, pinned_layers=-1), "pinned_layers"),
])
def test_pinned_config_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CacheConfig(**kwargs)


def test_pinned_layers_checked_against_the_model() -> None:
    with pytest.raises(ValueError, match="5 pinned layers, but the model has 4"):
        ExpertCache(CacheConfig(1, 1, pinned_layers=5), 4, 3, 100)
    with pytest.raises(ValueError, match="3 cache sets for 2 layers not pinned"):
        ExpertCache(CacheConfig(3, 1, pinned_layers=2), 4, 3, 100)
    assert CacheConfig(2, 3, pinned_layers=4).total_slots(8) == 6 + 32
