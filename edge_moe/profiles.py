"""Hardware profiles: TOML files describing classes of machines, matched to the detected one.

A profile gives the figures the planner starts from (DRAM read, PCIe host->GPU
and GPU memory bandwidth) before this machine is measured, and defaults
(threads, VRAM margin, context). The user can override any figure or default,
or force a profile, in `user_config_dir("edge-moe")/profile.toml`:

    profile = "rtx3060-12gb"        # optional: skip matching
    [expected]
    dram_read_gbps = 72.0
    [defaults]
    threads = 6

Profiles ship in the package `edge_moe.profiles_data` (mapped to the repo's
`profiles/` directory by pyproject.toml); from a plain source tree we read
`profiles/` directly.
"""

from __future__ import annotations

import math
import tomllib
import types
from dataclasses import MISSING, dataclass, fields, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

from edge_moe.errors import EdgeMoeError
from edge_moe.hardware import GIB, HardwareInfo

PROFILES_PACKAGE = "edge_moe.profiles_data"
SOURCE_TREE_PROFILES = Path(__file__).resolve().parent.parent / "profiles"


class ProfileError(EdgeMoeError):
    """A profile or override file is malformed: names the file and the field."""

    def __init__(self, path: str | Path, field: str, problem: str) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{path}: {field}: {problem}" if field else f"{path}: {problem}")


class _Invalid(ValueError):
    """Raised by __post_init__ checks; turned into a ProfileError naming the file."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def _check_range(name: str, r: tuple[float, float] | None) -> None:
    if r is not None and not 0 <= r[0] <= r[1]:
        raise _Invalid(name, f"range must be [low, high] with 0 <= low <= high, got {list(r)}")


@dataclass(frozen=True)
class MatchRule:
    has_gpu: bool
    vram_gib: tuple[float, float] | None = None  # total VRAM of the primary GPU, inclusive
    physical_cores: tuple[int, int] | None = None
    gpu_name_contains: tuple[str, ...] = ()  # any one, case-insensitive

    def __post_init__(self) -> None:
        _check_range("vram_gib", self.vram_gib)
        _check_range("physical_cores", self.physical_cores)
        if not self.has_gpu and (self.vram_gib or self.gpu_name_contains):
            raise _Invalid("has_gpu", "a profile without GPU cannot match on VRAM or GPU name")


@dataclass(frozen=True)
class ExpectedFigures:
    """Bandwidths in GB/s (1e9 bytes/s): starting points until measured on the machine."""

    dram_read_gbps: float
    pcie_h2d_gbps: float | None = None  # pinned host->GPU copies
    gpu_bandwidth_gbps: float | None = None
    source: Literal["default", "measured"] = "default"

    def __post_init__(self) -> None:
        for name in ("dram_read_gbps", "pcie_h2d_gbps", "gpu_bandwidth_gbps"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise _Invalid(name, f"must be a positive number, got {value}")


@dataclass(frozen=True)
class ProfileDefaults:
    threads: int | Literal["auto"] = "auto"  # auto: performance cores, else physical cores
    vram_margin_gib: float = 1.0  # VRAM left free for the display, CUDA context, fragmentation
    context_length: int = 4096
    kv_cache_type: Literal["f16", "q8_0"] = "f16"
    prefill_chunk: int = 512  # tokens per prefill step

    def __post_init__(self) -> None:
        if self.threads != "auto" and self.threads < 1:
            raise _Invalid("threads", f"must be >= 1 or \"auto\", got {self.threads}")
        if not 0 <= self.vram_margin_gib < 1024:
            raise _Invalid("vram_margin_gib", f"must be in [0, 1024), got {self.vram_margin_gib}")
        for name in ("context_length", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise _Invalid(name, f"must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    match: MatchRule
    expected: ExpectedFigures
    defaults: ProfileDefaults
    notes: str = ""
    source: str = ""  # the file it was read from
    overridden: tuple[str, ...] = ()  # "section.field" a user override replaced

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "notes": self.notes,
            "source": self.source, "overridden": list(self.overridden),
            "match": {f.name: _jsonable(getattr(self.match, f.name)) for f in fields(MatchRule)},
            "expected": {f.name: getattr(self.expected, f.name) for f in fields(ExpectedFigures)},
            "defaults": {f.name: getattr(self.defaults, f.name) for f in fields(ProfileDefaults)},
        }


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------- TOML -> dataclasses

def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check one TOML value against a dataclass field's type hint."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):  # "X | None": absent in TOML means None
        problems = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, where)
            except _Invalid as e:
                problems.append(e.problem.split(", got")[0].removeprefix("must be "))
        raise _Invalid(where, f"must be {' or '.join(problems)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise _Invalid(where, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(where, f"must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise _Invalid(where, f"must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise _Invalid(where, f"must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _fields_of(table: Any, cls: type, section: str, partial: bool) -> dict[str, Any]:
    """Validated constructor arguments for `cls` from a TOML table (all optional if partial)."""
    if not isinstance(table, dict):
        raise _Invalid(section, "must be a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in table:
        if key not in known:
            raise _Invalid(f"{section}.{key}", f"unknown field (known: {', '.join(known)})")
    if not partial:
        for f in known.values():
            required = f.default is MISSING and f.default_factory is MISSING
            if required and f.name not in table:
                raise _Invalid(f"{section}.{f.name}", "missing")
    return {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()}


def _qualify(section: str, e: _Invalid) -> _Invalid:
    return e if e.field.startswith(section + ".") else _Invalid(f"{section}.{e.field}", e.problem)


def parse_profile(data: dict[str, Any], source: str) -> HardwareProfile:
    """One profile from its parsed TOML; ProfileError names `source` and the bad field."""
    allowed = {"name", "description", "notes", "match", "expected", "defaults"}
    try:
        for key in data:
            if key not in allowed:
                raise _Invalid(key, f"unknown field (known: {', '.join(sorted(allowed))})")
        for key in ("name", "description"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise _Invalid(key, "must be a non-empty string")
        if not isinstance(data.get("notes", ""), str):
            raise _Invalid("notes", "must be a string")
        sections = {}
        for section, cls in (("match", MatchRule), ("expected", ExpectedFigures),
                             ("defaults", ProfileDefaults)):
            try:
                sections[section] = cls(**_fields_of(data.get(section, {}), cls, section, False))
            except _Invalid as e:
                raise _qualify(section, e) from None
    except _Invalid as e:
        raise ProfileError(source, e.field, e.problem) from None
    return HardwareProfile(name=data["name"], description=data["description"],
                           notes=" ".join(data.get("notes", "").split()), source=source, **sections)


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(source, "", f"not valid TOML: {e}") from None


# ---------------------------------------------------------------- finding the files

def profiles_dir() -> Traversable:
    """The installed package data if there is one, else the source tree's profiles/."""
    try:
        return resources.files(PROFILES_PACKAGE)
    except ModuleNotFoundError:
        return SOURCE_TREE_PROFILES


def load_profiles(directory: Traversable | Path | None = None) -> tuple[HardwareProfile, ...]:
    """Every *.toml profile in `directory` (default: profiles_dir()), sorted by name."""
    directory = directory if directory is not None else profiles_dir()
    try:
        files = sorted((p for p in directory.iterdir() if p.name.endswith(".toml")),
                       key=lambda p: p.name)
    except OSError as e:
        raise ProfileError(str(directory), "", f"cannot list hardware profiles: {e}") from None
    if not files:
        raise ProfileError(str(directory), "", "no hardware profiles (*.toml) found")
    profiles: dict[str, HardwareProfile] = {}
    for f in files:
        source = str(f)
        profile = parse_profile(_read_toml(f.read_text(encoding="utf-8"), source), source)
        if profile.name in profiles:
            raise ProfileError(source, "name", f"{profile.name!r} already used by "
                                               f"{profiles[profile.name].source}")
        profiles[profile.name] = profile
    return tuple(profiles[n] for n in sorted(profiles))


def user_override_path() -> Path:
    import platformdirs  # only here: detection and matching do not need it

    return Path(platformdirs.user_config_dir("edge-moe")) / "profile.toml"


# ---------------------------------------------------------------- matching

class ProfileMatch(NamedTuple):
    profile: HardwareProfile
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.profile.to_dict(), "score": round(self.score, 3), "reason": self.reason}

    def describe(self) -> str:
        p, e, d = self.profile, self.profile.expected, self.profile.defaults

        def fig(name: str, v: float | None) -> str:
            mark = " (override)" if f"expected.{name}" in p.overridden else ""
            return f"{'n/a' if v is None else f'{v:g} GB/s'}{mark}"

        lines = [
            f"Profile {p.name}: {p.description}",
            f"        why: {self.reason}",
            f"        expected ({e.source}; replaced by measurements): DRAM read "
            f"{fig('dram_read_gbps', e.dram_read_gbps)}, PCIe H2D {fig('pcie_h2d_gbps', e.pcie_h2d_gbps)}, "
            f"GPU memory {fig('gpu_bandwidth_gbps', e.gpu_bandwidth_gbps)}",
            f"        defaults: threads {d.threads}, VRAM margin {d.vram_margin_gib:g} GiB, "
            f"context {d.context_length}, KV {d.kv_cache_type}, prefill chunk {d.prefill_chunk}",
        ]
        if p.overridden:
            lines.append(f"        overridden by the user: {', '.join(p.overridden)}")
        if p.notes:
            lines.append(f"        notes: {p.notes}")
        return "\n".join(lines)


def _range_score(value: float, r: tuple[float, float], weight: float, what: str,
                 unit: str) -> tuple[float, str]:
    """+weight inside the range; outside, minus the log2 distance so the nearest profile wins."""
    span = f"{r[0]:g}-{r[1]:g}{unit}"
    if r[0] <= value <= r[1]:
        return weight, f"{what} in {span}"
    bound = r[0] if value < r[0] else r[1]
    side = "below" if value < r[0] else "above"
    return -weight * abs(math.log2(max(value, 1e-3) / max(bound, 1e-3))), f"{what} {side} {span}"


def score_profile(profile: HardwareProfile, hw: HardwareInfo) -> tuple[float, str] | None:
    """(score, reason) of `profile` for `hw`; None if it cannot apply (GPU vs no GPU)."""
    rule, gpu = profile.match, hw.primary_gpu
    if rule.has_gpu != (gpu is not None):
        return None
    score, reasons = 0.0, []
    if gpu is not None:
        name = gpu.name or ""
        hit = next((s for s in rule.gpu_name_contains if s.lower() in name.lower()), None)
        which = f"GPU {gpu.index} {name or '?'!r}"
        if len(hw.gpus) > 1:
            which += f" (largest of {len(hw.gpus)})"
        if hit is not None:
            score += 3.0
            reasons.append(f"{which} contains {hit!r}")
        else:
            reasons.append(f"{which}, no name match")
        if rule.vram_gib is not None:
            if gpu.total_vram_bytes is None:
                reasons.append("VRAM unknown")
            else:
                vram = gpu.total_vram_bytes / GIB
                s, why = _range_score(vram, rule.vram_gib, 2.0, f"VRAM {vram:.1f} GiB", " GiB")
                score, reasons = score + s, reasons + [why]
    else:
        reasons.append(f"no GPU: {hw.nvml_error or 'none found'}")
    if rule.physical_cores is not None:
        cores = hw.cpu.physical_cores
        s, why = _range_score(cores, rule.physical_cores, 1.0, f"{cores} physical cores", "")
        score, reasons = score + s, reasons + [why]
    return score, "; ".join(reasons)


def match_profile(hw: HardwareInfo, profiles: tuple[HardwareProfile, ...]) -> ProfileMatch:
    """The best-scoring profile; ties go to the first by name."""
    scored = [(s[0], i, p, s[1]) for i, p in enumerate(profiles)
              if (s := score_profile(p, hw)) is not None]
    if not scored:
        kind = "a GPU" if hw.primary_gpu else "no GPU"
        raise ProfileError("hardware profiles", "", f"no profile is for machines with {kind} "
                                                    f"(have: {', '.join(p.name for p in profiles)})")
    score, _, profile, reason = max(scored, key=lambda t: (t[0], -t[1]))
    return ProfileMatch(profile, score, reason)


# ---------------------------------------------------------------- user override

def apply_override(profile: HardwareProfile, data: dict[str, Any], source: str) -> HardwareProfile:
    """`profile` with the fields of a parsed override file replacing its own."""
    changed: list[str] = []
    updates: dict[str, Any] = {}
    try:
        for key in data:
            if key not in ("profile", "notes", "expected", "defaults"):
                raise _Invalid(key, "unknown field (an override may set: profile, notes, "
                                    "[expected], [defaults]; matching rules cannot be overridden)")
        if "notes" in data:
            updates["notes"] = _coerce(data["notes"], str, "notes")
            changed.append("notes")
        for section, cls in (("expected", ExpectedFigures), ("defaults", ProfileDefaults)):
            if section in data:
                values = _fields_of(data[section], cls, section, partial=True)
                try:
                    updates[section] = replace(getattr(profile, section), **values)
                except _Invalid as e:
                    raise _qualify(section, e) from None
                changed += [f"{section}.{k}" for k in values]
    except _Invalid as e:
        raise ProfileError(source, e.field, e.problem) from None
    return replace(profile, overridden=tuple(changed), **updates)


def select_profile(hw: HardwareInfo, profiles: tuple[HardwareProfile, ...] | None = None,
                   override_path: Path | None = None) -> ProfileMatch:
    """Match `hw`, then apply the user override file (default: user_override_path())."""
    profiles = profiles if profiles is not None else load_profiles()
    path = override_path if override_path is not None else user_override_path()
    try:
        data = _read_toml(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else {}
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(path, "", f"cannot read the override file: {e}") from None
    forced = data.get("profile")
    if forced is not None and not isinstance(forced, str):
        raise ProfileError(path, "profile", f"must be a profile name (string), got {forced!r}")
    if forced is not None:
        by_name = {p.name: p for p in profiles}
        if forced not in by_name:
            raise ProfileError(path, "profile", f"unknown profile {forced!r} "
                                                f"(have: {', '.join(by_name)})")
        scored = score_profile(by_name[forced], hw)
        match = ProfileMatch(by_name[forced], scored[0] if scored else 0.0, f"chosen in {path}")
    else:
        match = match_profile(hw, profiles)
    if data:
        match = match._replace(profile=apply_override(match.profile, data, str(path)))
    return match


def resolve_threads(profile: HardwareProfile, hw: HardwareInfo) -> int:
    """CPU threads for the expert kernels: the profile's number, or P-cores / physical cores."""
    if profile.defaults.threads != "auto":
        return profile.defaults.threads
    n = hw.cpu.performance_cores or hw.cpu.physical_cores
    if hw.cpu.usable_cpus is not None:
        n = min(n, hw.cpu.usable_cpus)  # a container or taskset may give us fewer
    return max(1, n)
