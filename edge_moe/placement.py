"""Where the planner may put the expert slots: the candidate placements it simulates.

A placement is (pinned layers P, sets N, ways M): the last P layers keep every expert in VRAM
and decode as CUDA graphs with no host round trip (CacheConfig.pinned_layers, llama.cpp's
whole-layer placement); N sets x M ways serve the other layers, or none (N = M = 0: those layers
run every expert on the CPU and skip the cache's host work). The planner (edge_moe/planner.py)
simulates each candidate on a routing trace and keeps the fastest.
"""

from __future__ import annotations

from edge_moe.expert_cache import CacheConfig
from edge_moe.hardware import GIB

Placement = tuple[int, int, int]  # (pinned layers, sets, ways)


def candidate_placements(budget: int, slot: int, n_layer: int, n_expert: int, notes: list[str],
                         pinned_layers: int | None = None, n_sets: int | None = None,
                         n_ways: int | None = None) -> list[Placement]:
    """The placements to simulate for `budget` bytes of slots of `slot` bytes; [] when not even
    one slot fits. The user's flags (pinned_layers, n_sets, n_ways) give exactly one. Without
    them: P_max pinned layers (as many whole layers as the slots hold), half as many, and none,
    each with the slots left over as sets for the other layers, and P_max with no sets."""
    if n_sets is not None or n_ways is not None or pinned_layers is not None:
        pinned = pinned_layers or 0
        if pinned > n_layer:
            raise ValueError(f"{pinned} pinned layers, but the model has {n_layer}")
        dynamic, rest = n_layer - pinned, budget - pinned * n_expert * slot
        if n_sets is not None or n_ways is not None:
            sets = n_sets or dynamic
            ways = n_ways or max(1, min(n_expert, rest // (slot * max(sets, 1))))
        else:
            sets, ways = sets_for(rest // slot, dynamic, slot, n_expert)
        if pinned == 0 and sets == 0:
            notes.append(f"no cache: {budget / GIB:.2f} GiB left for expert slots holds no expert slot")
            return []
        flags = ", ".join(f for f, v in (("--pinned-layers", pinned_layers), ("--cache-nblocks", n_sets),
                                          ("--cache-nways", n_ways)) if v is not None)
        notes.append(f"{placement_text(CacheConfig(sets, ways, pinned_layers=pinned))}: your flags ({flags})")
        return [(pinned, sets, ways)]
    n_slots = budget // slot
    if n_slots < 1:
        notes.append(f"no cache: {budget / GIB:.2f} GiB left for expert slots holds no "
                     f"{slot / 2**20:.1f} MiB expert slot")
        return []
    notes.append(f"{n_slots} slots of {slot / 2**20:.1f} MiB in {budget / GIB:.2f} GiB left after dense weights, "
                 "KV and margin")
    if n_slots >= n_layer * n_expert:
        notes.append(f"cache {n_layer} sets x {n_expert} ways (every expert: nothing is ever evicted)")
        return [(0, n_layer, n_expert)]
    p_max = n_slots // n_expert  # < n_layer here
    out = [(pinned, *sets_for(n_slots - pinned * n_expert, n_layer - pinned, slot, n_expert))
           for pinned in sorted({0, p_max // 2, p_max})]
    if p_max and out[-1][1]:  # and the leftover slots unused: the other layers skip the cache's host work
        out.append((p_max, 0, 0))
    return out


def sets_for(n_slots: int, n_layers: int, slot: int, n_expert: int) -> tuple[int, int]:
    """(sets, ways) of n_slots slots for n_layers layers (CacheConfig.from_budget); (0, 0) for none."""
    if n_slots < 1 or n_layers < 1:
        return 0, 0
    c = CacheConfig.from_budget(n_slots * slot, slot, n_layers, n_expert)
    return c.n_sets, c.n_ways


def placement_text(c: CacheConfig) -> str:
    """A placement in words, as the plan's notes and `format_plan` show it."""
    sets = f"cache {c.n_sets} sets x {c.n_ways} ways"
    if not c.pinned_layers:
        return sets
    return f"last {c.pinned_layers} layers pinned" + (f", {sets} for the others" if c.n_sets else ", no other slots")
