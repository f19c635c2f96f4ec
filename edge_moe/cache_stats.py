"""The expert cache's counters (edge_moe/expert_cache.py): per layer, with totals and bytes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheStats:
    """Counters per layer; totals and byte counts as properties.

    Bytes follow DESIGN.md's cost model: a fill moves expert_bytes over PCIe and reads
    them from DRAM; a miss makes the CPU read expert_bytes from DRAM. Preloads (initial
    placement) are counted apart from fills.
    """

    expert_bytes: int
    hits_by_layer: list[int]
    misses_by_layer: list[int]
    fills_by_layer: list[int]
    evictions_by_layer: list[int]  # by the layer of the expert evicted
    declined_by_layer: list[int]  # the admission policy said no
    blocked_by_layer: list[int]  # every way of the set was pinned
    preloads: int = 0
    tokens: int = 0

    @classmethod
    def empty(cls, n_layers: int, expert_bytes: int) -> CacheStats:
        return cls(expert_bytes, *([0] * n_layers for _ in range(6)))

    @property
    def hits(self) -> int:
        return sum(self.hits_by_layer)

    @property
    def misses(self) -> int:
        return sum(self.misses_by_layer)

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def fills(self) -> int:
        return sum(self.fills_by_layer)

    @property
    def evictions(self) -> int:
        return sum(self.evictions_by_layer)

    @property
    def declined(self) -> int:
        return sum(self.declined_by_layer)

    @property
    def blocked(self) -> int:
        return sum(self.blocked_by_layer)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def pcie_bytes(self) -> int:
        return self.fills * self.expert_bytes

    @property
    def cpu_dram_bytes(self) -> int:
        return self.misses * self.expert_bytes

    @property
    def dram_bytes(self) -> int:
        """All expert bytes read from host DRAM: CPU misses plus fills."""
        return self.cpu_dram_bytes + self.pcie_bytes
