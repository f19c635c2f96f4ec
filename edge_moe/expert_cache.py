"""The GPU expert cache's bookkeeping: which (layer, expert) lives in which slot, and what to evict.

Pure Python, no torch. Slots are the integers 0 .. n_sets * n_ways - 1 (slot = set * n_ways
+ way); the executor maps them to GPU memory (edge_moe/gpu_slots.py). One decode step uses
the cache like this:

    cache.begin_token()
    for each layer:
        slots = [cache.lookup(layer, e) for e in top_k]      # hit: slot, miss: None
        pin the hit slots while their kernels are in flight
        for each miss: decision = cache.admit(layer, e)      # None: not filled
            if decision: pin(decision.slot), fill it on the side stream, unpin when the
            fill is ordered before later reads
        unpin
    cache.end_token()

Set index (the paper's flags --cache-nblocks N, --cache-nways M): `set_index(layer, N)` =
layer mod N, and a set's tag is the pair (layer, expert).
- N >= n_layers: layer i uses set i with M ways of its own, the paper's mapping. (N may
  not exceed n_layers: the extra sets could never be used.)
- N < n_layers: layers i, i + N, i + 2N, ... share set i and its M ways, so every layer is
  covered; the paper's prototype leaves layers >= N uncached. We share sets modulo N
  rather than in contiguous groups (layers 2i and 2i+1 -> set i) because the layers of
  a set then run N layers apart in each token: when layer i + N admits, the kernels of
  layer i have long finished and unpinned their slots, while with contiguous groups the
  next layer's fills would find the previous layer's slots still pinned.

Pinned layers (`CacheConfig.pinned_layers` = P, llama.cpp's static placement by whole layers):
the last P layers keep every expert in VRAM, installed at construction and never evicted, in
slots after the sets' (slot = n_sets * n_ways + (layer - first pinned) * n_experts + expert).
Their lookups always hit, so the executor runs them as CUDA-graph segments with no host in the
loop (edge_moe/decode_graphs.py); the N sets x M ways serve the other layers only (N may be 0:
those layers then run every expert on the CPU). Under near-uniform routing a layer's hit rate
is its share of cached experts wherever they sit, so pinning whole layers costs no hits and
saves each pinned layer's host round trip.

Admission (edge_moe/cache_admission.py) decides whether a miss is filled at all; the
replacement policy picks the victim within the set. `admit` picks the victim first and
then asks the admission policy, because a rule that weighs reuse needs to know what the
fill would evict. Victims: an empty way if the set has one (lowest way first), else among
the ways not pinned:
- LRU: the least recently used (looked up or filled) expert.
- FIFO: the one filled earliest.
- LFU: the fewest uses since it was filled (the fill counts as one), ties by LRU.
- RANDOM: uniformly at random from a generator seeded by `CacheConfig.seed`.
A pinned slot (read by a kernel in flight, or being filled) is never a victim; when every
way of the set is pinned, the miss is not filled ("blocked").
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_moe.cache_admission import AdmissionConfig, AdmissionPolicy, ExpertKey, build_admission
from edge_moe.cache_stats import CacheStats


class ReplacePolicy(str, enum.Enum):
    LRU = "LRU"
    FIFO = "FIFO"
    LFU = "LFU"
    RANDOM = "random"


def parse_replace_policy(name: str) -> ReplacePolicy:
    """`--cache-replace-policy` value, case-insensitive."""
    for policy in ReplacePolicy:
        if policy.value.lower() == name.lower():
            return policy
    choices = "|".join(p.value for p in ReplacePolicy)
    raise ValueError(f"unknown cache replacement policy {name!r}; choose one of {choices}")


def set_index(layer: int, n_sets: int) -> int:
    """The set that caches `layer`'s experts: layer mod n_sets (see the module docstring)."""
    return layer % n_sets


@dataclass(frozen=True)
class CacheConfig:
    n_sets: int  # --cache-nblocks
    n_ways: int  # --cache-nways
    replace: ReplacePolicy = ReplacePolicy.LRU  # --cache-replace-policy
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    seed: int = 0  # the RANDOM policy's generator
    pinned_layers: int = 0  # the last P layers keep every expert (module docstring); --pinned-layers

    def __post_init__(self) -> None:
        if isinstance(self.replace, str) and not isinstance(self.replace, ReplacePolicy):
            object.__setattr__(self, "replace", parse_replace_policy(self.replace))
        if self.pinned_layers < 0:
            raise ValueError(f"pinned_layers must be >= 0, got {self.pinned_layers}")
        if self.pinned_layers > 0 and self.n_sets == 0 and self.n_ways == 0:
            return  # pinned layers only: the other layers have no slots (llama.cpp's placement)
        if self.n_sets < 1:
            raise ValueError(f"the cache needs at least one set (--cache-nblocks), got {self.n_sets}")
        if self.n_ways < 1:
            raise ValueError(f"each cache set needs at least one way (--cache-nways), got {self.n_ways}")

    @property
    def n_slots(self) -> int:
        """Slots of the sets (the pinned layers' come on top: `total_slots`)."""
        return self.n_sets * self.n_ways

    def total_slots(self, n_experts: int) -> int:
        """Every slot the cache allocates: the sets' plus n_experts per pinned layer."""
        return self.n_slots + self.pinned_layers * n_experts

    @classmethod
    def from_budget(cls, budget_bytes: int, expert_bytes: int, n_layers: int, n_experts: int,
                    replace: ReplacePolicy = ReplacePolicy.LRU,
                    admission: AdmissionConfig | None = None, seed: int = 0) -> CacheConfig:
        """Size the cache from a GPU memory budget for expert slots (`--gpu-budget GiB`).

        `budget_bytes` is what the slots may use (the caller has already set aside the dense
        weights, KV cache and workspace); one slot holds one expert's gate, up and down.
        - Budget for at least one expert per layer: one set per layer (the paper's mapping),
          ways = floor(slots / n_layers), when that leaves at most ~2% of the slots unused;
          else the largest divisor of n_layers as the number of sets that does (sets then
          shared by layers). Budget for every expert: one set per layer, all ways.
        - Budget for fewer experts than layers: n_slots sets of one way each, shared by
          layers modulo n_slots (every layer covered, as `set_index` says). Sharing is no
          cure for a tiny cache: with one way per set, admit-all thrashes (each layer of a
          set evicts the others' experts within a token), so pair it with reuse admission.
          On the Mixtral trace (shared/traces), 16 slots for 32 layers: admit-all gets no
          hits and 1.5x the DRAM reads of no cache; reuse admission 10% hits and 7% fewer
          reads than no cache, no worse than caching only the first 16 layers (the paper).
        """
        if expert_bytes <= 0:
            raise ValueError(f"expert_bytes must be positive, got {expert_bytes}")
        if n_layers < 1 or n_experts < 1:
            raise ValueError(f"a model needs layers and experts, got {n_layers} layers, {n_experts} experts")
        n_slots = budget_bytes // expert_bytes
        if n_slots < 1:
            raise ValueError(f"a GPU budget of {budget_bytes / 2**30:.3f} GiB holds no expert of "
                             f"{expert_bytes / 2**20:.1f} MiB; give at least one expert's worth")
        if n_slots >= n_layers * n_experts:  # every expert fits: one set per layer, never an eviction
            n_sets, n_ways = n_layers, n_experts
        elif n_slots >= n_layers:
            # One set per layer when the slots divide evenly enough; else fewer sets shared by
            # layers (layer mod n_sets; n_sets divides n_layers so every set serves as many
            # layers) so that at most ~2% of the budget's slots stay unallocated. Mixtral at
            # 12 GiB: 83 slots are 32 x 2 = 64 per layer (19 lost, 1.9 GB) but 2 x 41 = 82.
            allowed = max(1, n_slots // 50)
            n_sets = max(d for d in range(1, n_layers + 1)
                         if n_layers % d == 0 and n_slots - n_slots // d * d <= allowed)
            n_ways = min(n_slots // n_sets, n_experts * (n_layers // n_sets))
        else:
            n_sets, n_ways = n_slots, 1
        return cls(n_sets, n_ways, replace, admission if admission is not None else AdmissionConfig(), seed)


@dataclass(frozen=True, slots=True)
class FillDecision:
    """A miss the cache admitted: fill `slot` with (layer, expert); `evicted` left it."""

    slot: int
    layer: int
    expert: int
    evicted: ExpertKey | None


class ExpertCache:
    """N sets x M ways of expert slots: lookups, admissions, pins and statistics."""

    def __init__(self, config: CacheConfig, n_layers: int, n_experts: int, expert_bytes: int,
                 admission: AdmissionPolicy | None = None) -> None:
        if n_layers < 1 or n_experts < 1:
            raise ValueError(f"a model needs layers and experts, got {n_layers} layers, {n_experts} experts")
        if expert_bytes <= 0:
            raise ValueError(f"expert_bytes must be positive, got {expert_bytes}")
        if config.pinned_layers > n_layers:
            raise ValueError(f"{config.pinned_layers} pinned layers, but the model has {n_layers}")
        dynamic = n_layers - config.pinned_layers  # layers the sets serve
        if config.n_sets > dynamic:
            raise ValueError(f"{config.n_sets} cache sets for {dynamic} layers not pinned: sets "
                             f"{dynamic}..{config.n_sets - 1} would never be used (--cache-nblocks at most {dynamic})")
        if config.n_sets:
            max_keys = n_experts * -(-dynamic // config.n_sets)  # experts of the layers sharing the fullest set
            if config.n_ways > max_keys:
                raise ValueError(f"{config.n_ways} ways per set, but a set serves at most {max_keys} experts "
                                 f"({n_experts} per layer): --cache-nways at most {max_keys}")
        self.config = config
        self.n_layers = n_layers
        self.n_experts = n_experts
        self.n_sets = config.n_sets
        self.n_ways = config.n_ways
        self.first_pinned = dynamic  # layers first_pinned.. keep every expert
        self.n_slots = config.total_slots(n_experts)
        self.admission = admission if admission is not None else build_admission(config.admission)
        self.stats = CacheStats.empty(n_layers, expert_bytes)
        self._rng = random.Random(config.seed)
        self._clock = 0  # ticks once per lookup, admission and preload
        self._key: list[ExpertKey | None] = [None] * self.n_slots
        self._slot_of: dict[ExpertKey, int] = {}
        self._last_use = [0] * self.n_slots
        self._filled_at = [0] * self.n_slots
        self._uses = [0] * self.n_slots
        self._pins = [0] * self.n_slots
        for layer in range(self.first_pinned, n_layers):  # installed now, filled by the owner
            for expert in range(n_experts):
                self._install(self._pinned_slot(layer, expert), (layer, expert))
        self.stats.preloads = config.pinned_layers * n_experts

    # ---- the hot path -------------------------------------------------------------------

    def lookup(self, layer: int, expert: int) -> int | None:
        """The slot holding (layer, expert), or None on a miss. A hit counts as a use."""
        self._check_key(layer, expert)
        self._clock += 1
        self.admission.observe(layer, expert)
        slot = self._slot_of.get((layer, expert))
        if slot is None:
            self.stats.misses_by_layer[layer] += 1
            return None
        self.stats.hits_by_layer[layer] += 1
        self._last_use[slot] = self._clock
        self._uses[slot] += 1
        return slot

    def lookup_and_pin(self, layer: int, experts: Iterable[int]) -> list[int]:
        """`lookup` of each expert in order, pinning every hit; -1 for a miss. The executor's
        per-layer call: one Python loop instead of two method calls per routed expert."""
        if not 0 <= layer < self.n_layers:
            self._check_key(layer, 0)  # raises, naming the layer
        observe, slot_of = self.admission.observe, self._slot_of
        out = []
        for expert in experts:
            expert = int(expert)
            if not 0 <= expert < self.n_experts:
                self._check_key(layer, expert)
            self._clock += 1
            observe(layer, expert)
            slot = slot_of.get((layer, expert))
            if slot is None:
                self.stats.misses_by_layer[layer] += 1
                out.append(-1)
                continue
            self.stats.hits_by_layer[layer] += 1
            self._last_use[slot] = self._clock
            self._uses[slot] += 1
            self._pins[slot] += 1
            out.append(slot)
        return out

    def unpin_many(self, slots: Iterable[int]) -> None:
        for slot in slots:
            self.unpin(int(slot))

    def admit(self, layer: int, expert: int) -> FillDecision | None:
        """Decide whether a missed (layer, expert) is filled; if so, where and what it evicts.

        The slot belongs to (layer, expert) from now on (later lookups hit it): the caller
        must order reads after the fill (SlotStore.wait_filled) and pin it while filling.
        """
        self._check_key(layer, expert)
        key = (layer, expert)
        if key in self._slot_of:
            raise ValueError(f"expert {expert} of layer {layer} is already cached in slot {self._slot_of[key]}")
        if self.n_sets == 0:  # only pinned layers have slots: this layer runs on the CPU
            return None
        self._clock += 1  # a fill is a use: it becomes the most recent, after the lookups before it
        slot = self._choose_victim(set_index(layer, self.n_sets))
        if slot is None:
            self.stats.blocked_by_layer[layer] += 1
            return None
        victim = self._key[slot]
        if not self.admission.should_admit(layer, expert, victim):
            self.stats.declined_by_layer[layer] += 1
            return None
        if victim is not None:
            del self._slot_of[victim]
            self.stats.evictions_by_layer[victim[0]] += 1
        self._install(slot, key)
        self.admission.record_fill(layer, expert)
        self.stats.fills_by_layer[layer] += 1
        return FillDecision(slot, layer, expert, victim)

    def pin(self, slot: int) -> None:
        """Protect `slot` from eviction (a kernel reads it, or it is being filled). Pins nest."""
        self._check_slot(slot)
        if self._key[slot] is None:
            raise ValueError(f"slot {slot} is empty: only a slot holding an expert can be pinned")
        self._pins[slot] += 1

    def unpin(self, slot: int) -> None:
        self._check_slot(slot)
        if self._pins[slot] == 0:
            raise ValueError(f"slot {slot} is not pinned")
        self._pins[slot] -= 1

    def begin_token(self) -> None:
        self.admission.begin_token()

    def end_token(self) -> None:
        self.stats.tokens += 1
        self.admission.end_token()

    # ---- placement and inspection -------------------------------------------------------

    def preload(self, assignments: Iterable[ExpertKey]) -> list[FillDecision]:
        """Place experts into empty ways (e.g. the statically hottest ones), in order.

        Bypasses admission; counts as preloads, not fills. A set with no empty way left is
        an error: preloading never evicts.
        """
        decisions = []
        for layer, expert in assignments:
            self._check_key(layer, expert)
            if self.is_pinned_layer(layer):
                raise ValueError(f"preload: layer {layer} is pinned (every expert already cached)")
            if (layer, expert) in self._slot_of:
                raise ValueError(f"preload lists expert {expert} of layer {layer} twice")
            set_ = set_index(layer, self.n_sets)
            slot = next((s for s in self.slots_of_set(set_) if self._key[s] is None), None)
            if slot is None:
                raise ValueError(f"preload: set {set_} (layer {layer}) has no empty way left of {self.n_ways}")
            self._clock += 1
            self._install(slot, (layer, expert))
            self.stats.preloads += 1
            decisions.append(FillDecision(slot, layer, expert, None))
        return decisions

    def is_pinned_layer(self, layer: int) -> bool:
        return layer >= self.first_pinned

    def pinned_contents(self) -> list[FillDecision]:
        """Every pinned (layer, expert) and its slot: what the owner copies in before the first read."""
        return [FillDecision(self._pinned_slot(layer, expert), layer, expert, None)
                for layer in range(self.first_pinned, self.n_layers) for expert in range(self.n_experts)]

    def _pinned_slot(self, layer: int, expert: int) -> int:
        return self.n_sets * self.n_ways + (layer - self.first_pinned) * self.n_experts + expert

    @property
    def n_cached(self) -> int:
        """Experts held now."""
        return len(self._slot_of)

    def contents(self) -> dict[int, ExpertKey]:
        """slot -> (layer, expert) for every occupied slot."""
        return {slot: key for slot, key in enumerate(self._key) if key is not None}

    def __contains__(self, key: ExpertKey) -> bool:
        return key in self._slot_of

    def is_pinned(self, slot: int) -> bool:
        self._check_slot(slot)
        return self._pins[slot] > 0

    def set_of_slot(self, slot: int) -> int:
        return slot // self.n_ways

    def slots_of_set(self, set_: int) -> range:
        return range(set_ * self.n_ways, (set_ + 1) * self.n_ways)

    def layers_of_set(self, set_: int) -> range:
        return range(set_, self.first_pinned, self.n_sets)

    def reset_stats(self) -> None:
        """Zero the counters (e.g. after warm-up); contents and policy state stay."""
        self.stats = CacheStats.empty(self.n_layers, self.stats.expert_bytes)

    # ---- internals ----------------------------------------------------------------------

    def _install(self, slot: int, key: ExpertKey) -> None:
        self._key[slot] = key
        self._slot_of[key] = slot
        self._last_use[slot] = self._clock
        self._filled_at[slot] = self._clock
        self._uses[slot] = 1

    def _choose_victim(self, set_: int) -> int | None:
        """The slot a fill of this set would take: an empty way, else per policy among unpinned."""
        ways = self.slots_of_set(set_)
        keys = self._key[ways.start:ways.stop]
        if None in keys:  # (C-level scans: this runs for every miss, over up to ~100 ways)
            return ways.start + keys.index(None)
        policy = self.config.replace
        if policy is ReplacePolicy.LRU or policy is ReplacePolicy.FIFO:
            # pinned slots are this layer's hits, just used: almost never the oldest
            stamp = self._last_use if policy is ReplacePolicy.LRU else self._filled_at
            oldest = min(ways, key=stamp.__getitem__)
            if self._pins[oldest] == 0:
                return oldest
        candidates = [slot for slot in ways if self._pins[slot] == 0]
        if not candidates:
            return None
        if policy is ReplacePolicy.LRU:
            return min(candidates, key=self._last_use.__getitem__)
        if policy is ReplacePolicy.FIFO:
            return min(candidates, key=self._filled_at.__getitem__)
        if policy is ReplacePolicy.LFU:
            return min(candidates, key=lambda s: (self._uses[s], self._last_use[s]))
        return self._rng.choice(candidates)

    def _check_key(self, layer: int, expert: int) -> None:
        if not (0 <= layer < self.n_layers and 0 <= expert < self.n_experts):
            raise ValueError(f"(layer {layer}, expert {expert}) is outside the model's "
                             f"{self.n_layers} layers x {self.n_experts} experts")

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} is outside 0..{self.n_slots - 1}")
