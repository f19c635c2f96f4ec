"""Hardware profiles: the shipped TOML files, matching fake machines, and user overrides."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_moe.hardware import main_describe
from edge_moe.profiles import (SOURCE_TREE_PROFILES, HardwareProfile, ProfileError, load_profiles, match_profile,
                               parse_profile, profiles_dir, resolve_threads, select_profile)
from tests.fake_machines import MACHINES, FakeGpu, desktop_4090, laptop_4060


Profiles = tuple[HardwareProfile, ...]


@pytest.fixture(scope="module")
def profiles() -> Profiles:
    return load_profiles()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_profiles_load(profiles: Profiles) -> None:
    names = {p.name for p in profiles}
    assert names == {"laptop-8gb", "rtx3060-12gb", "rtx4090-24gb", "cpu-only", "datacenter-h100"}
    for p in profiles:
        assert p.notes and p.description and p.expected.dram_read_gbps > 0
        assert p.expected.source == "default"
        assert Path(p.source).stem == p.name  # file named after its profile
        assert (p.expected.pcie_h2d_gbps is not None) == p.match.has_gpu
    # from this checkout: the installed package data if pyproject maps it, else profiles/
    assert any(f.name == "cpu-only.toml" for f in profiles_dir().iterdir())
    assert SOURCE_TREE_PROFILES.is_dir()


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_each_fake_machine_gets_its_profile(machine: str, profiles: Profiles, tmp_path: Path) -> None:
    m = MACHINES[machine]()
    hw = m.detect(tmp_path / "sys")
    match = match_profile(hw, profiles)
    assert match.profile.name == m.expected_profile, match.reason
    assert match.reason
    print(f"{machine}: {match.profile.name} ({match.score:.2f}): {match.reason}")


def test_reasons_say_why(profiles: Profiles, tmp_path: Path) -> None:
    hw = MACHINES["laptop_4060"]().detect(tmp_path / "sys")
    reason = match_profile(hw, profiles).reason
    assert "contains 'Laptop'" in reason and "VRAM 8.0 GiB in 3.5-10 GiB" in reason
    assert "8 physical cores in 4-14" in reason
    hw = MACHINES["cpu_only"]().detect(tmp_path / "sys")
    assert "no GPU: NVML library not found" in match_profile(hw, profiles).reason


def test_unlisted_gpus_go_to_the_nearest_profile(profiles: Profiles, tmp_path: Path) -> None:
    m = desktop_4090()
    for name, mib, expected in [("NVIDIA GeForce RTX 3090", 24576, "rtx4090-24gb"),
                                ("NVIDIA GeForce RTX 4070", 12282, "rtx3060-12gb"),
                                ("NVIDIA GeForce RTX 4060", 8188, "laptop-8gb"),
                                ("NVIDIA GeForce RTX 5090", 32607, "rtx4090-24gb"),
                                ("NVIDIA RTX PRO 6000", 97887, "datacenter-h100"),
                                ("NVIDIA H200", 143771, "datacenter-h100")]:
        m.nvml.gpus = [FakeGpu(name, mib, mib - 500)]
        match = match_profile(m.detect(tmp_path / "sys"), profiles)
        assert match.profile.name == expected, (name, match.reason)


def test_gpu_with_unknown_vram_still_matches(profiles: Profiles, tmp_path: Path) -> None:
    m = laptop_4060()
    m.nvml.failing["nvmlDeviceGetMemoryInfo"] = 999
    match = match_profile(m.detect(tmp_path / "sys"), profiles)
    assert match.profile.name == "laptop-8gb" and "VRAM unknown" in match.reason


def test_resolve_threads(profiles: Profiles, tmp_path: Path) -> None:
    by_name = {p.name: p for p in profiles}
    laptop = MACHINES["laptop_4060"]().detect(tmp_path / "sys")
    assert resolve_threads(by_name["laptop-8gb"], laptop) == 4  # performance cores only
    big = MACHINES["desktop_4090"]().detect(tmp_path / "sys")
    assert resolve_threads(by_name["rtx4090-24gb"], big) == 24
    boxed = replace(big, cpu=replace(big.cpu, usable_cpus=6))  # taskset / container
    assert resolve_threads(by_name["rtx4090-24gb"], boxed) == 6
    fixed = replace(by_name["rtx4090-24gb"], defaults=replace(by_name["rtx4090-24gb"].defaults,
                                                              threads=12))
    assert resolve_threads(fixed, big) == 12


def test_user_override_merges(profiles: Profiles, tmp_path: Path) -> None:
    hw = MACHINES["desktop_3060"]().detect(tmp_path / "sys")
    path = _write(tmp_path / "profile.toml", """
notes = "my box"
[expected]
dram_read_gbps = 44.5
source = "measured"
[defaults]
threads = 5
context_length = 16384
""")
    match = select_profile(hw, profiles, override_path=path)
    p = match.profile
    assert p.name == "rtx3060-12gb" and p.notes == "my box"
    assert p.expected.dram_read_gbps == 44.5 and p.expected.source == "measured"
    assert p.expected.pcie_h2d_gbps == 24.0  # not overridden: the profile's own
    assert (p.defaults.threads, p.defaults.context_length, p.defaults.kv_cache_type) == (5, 16384, "f16")
    assert set(p.overridden) == {"notes", "expected.dram_read_gbps", "expected.source",
                                 "defaults.threads", "defaults.context_length"}
    assert "44.5 GB/s (override)" in match.describe()
    assert resolve_threads(p, hw) == 5


def test_user_override_forces_a_profile(profiles: Profiles, tmp_path: Path) -> None:
    hw = MACHINES["desktop_3060"]().detect(tmp_path / "sys")
    path = _write(tmp_path / "profile.toml", 'profile = "rtx4090-24gb"\n')
    match = select_profile(hw, profiles, override_path=path)
    assert match.profile.name == "rtx4090-24gb" and str(path) in match.reason


def test_missing_override_file_is_fine(profiles: Profiles, tmp_path: Path) -> None:
    hw = MACHINES["desktop_3060"]().detect(tmp_path / "sys")
    match = select_profile(hw, profiles, override_path=tmp_path / "absent.toml")
    assert match.profile.name == "rtx3060-12gb" and match.profile.overridden == ()


@pytest.mark.parametrize("text, field, words", [
    ("[expected]\ndram_read_gbps = -3\n", "expected.dram_read_gbps", "positive"),
    ("[expected]\ndram_read_gbps = \"fast\"\n", "expected.dram_read_gbps", "must be float"),
    ("[defaults]\nthreads = 0\n", "defaults.threads", ">= 1"),
    ("[defaults]\nthreads = \"many\"\n", "defaults.threads", "must be int or one of 'auto'"),
    ("[defaults]\nthred = 4\n", "defaults.thred", "unknown field"),
    ("[defaults]\nkv_cache_type = \"f8\"\n", "defaults.kv_cache_type", "one of 'f16', 'q8_0'"),
    ("[match]\nhas_gpu = false\n", "match", "cannot be overridden"),
    ("profile = \"rtx9090\"\n", "profile", "unknown profile 'rtx9090'"),
    ("profile = 3\n", "profile", "must be a profile name"),
    ("expected = 3\n", "expected", "must be a table"),
    ("[defaults\nthreads = 4\n", "", "not valid TOML"),
])
def test_malformed_override_names_file_and_field(profiles: Profiles, tmp_path: Path, text: str,
                                                 field: str, words: str) -> None:
    hw = MACHINES["desktop_3060"]().detect(tmp_path / "sys")
    path = _write(tmp_path / "profile.toml", text)
    with pytest.raises(ProfileError) as e:
        select_profile(hw, profiles, override_path=path)
    assert e.value.path == str(path) and e.value.field == field
    assert words in str(e.value) and str(path) in str(e.value)


def _shipped(name: str) -> dict[str, Any]:
    return tomllib.loads((SOURCE_TREE_PROFILES / f"{name}.toml").read_text())


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("description"), "description"),
    (lambda d: d["match"].pop("has_gpu"), "match.has_gpu"),
    (lambda d: d["match"].update(vram_gib=[12, 8]), "match.vram_gib"),
    (lambda d: d["match"].update(vram_gib=[8]), "match.vram_gib"),
    (lambda d: d["expected"].pop("dram_read_gbps"), "expected.dram_read_gbps"),
    (lambda d: d.update(colour="red"), "colour"),
])
def test_malformed_profile(edit: Callable[[dict[str, Any]], Any], field: str) -> None:
    data = _shipped("laptop-8gb")
    edit(data)
    with pytest.raises(ProfileError) as e:
        parse_profile(data, "x.toml")
    assert e.value.field == field and str(e.value).startswith("x.toml: ")


def test_cpu_profile_cannot_match_on_vram() -> None:
    data = _shipped("cpu-only")
    data["match"]["vram_gib"] = [1, 2]
    with pytest.raises(ProfileError, match="match.has_gpu"):
        parse_profile(data, "cpu.toml")


def test_load_profiles_from_a_directory(tmp_path: Path) -> None:
    for name in ("cpu-only", "laptop-8gb"):
        (tmp_path / f"{name}.toml").write_text((SOURCE_TREE_PROFILES / f"{name}.toml").read_text())
    assert [p.name for p in load_profiles(tmp_path)] == ["cpu-only", "laptop-8gb"]
    (tmp_path / "copy.toml").write_text((SOURCE_TREE_PROFILES / "cpu-only.toml").read_text())
    with pytest.raises(ProfileError, match="already used"):
        load_profiles(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="no hardware profiles"):
        load_profiles(tmp_path / "empty")


def test_main_describe_with_fake_machine_and_override(tmp_path: Path) -> None:
    hw = MACHINES["laptop_4060"]().detect(tmp_path / "sys")
    path = _write(tmp_path / "profile.toml", "[defaults]\nvram_margin_gib = 0.5\n")
    text = main_describe(False, hw=hw, override_path=path)
    assert "Profile laptop-8gb" in text and "VRAM margin 0.5 GiB" in text and "Threads 4" in text
    d = json.loads(main_describe(True, hw=hw, override_path=path))
    assert d["profile"]["overridden"] == ["defaults.vram_margin_gib"] and d["threads"] == 4
    assert d["hardware"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 4060 Laptop GPU"
