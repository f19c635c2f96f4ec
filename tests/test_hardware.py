"""Hardware detection against faked NVML / psutil / cpuinfo answers, and on the real machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pynvml
import pytest

from edge_moe.hardware import GIB, detect_hardware, main_describe
from tests.fake_machines import (MACHINES, X86_AVX2, FakeNvml, FakePsutil, cpuinfo,
                                 desktop_3060, smt)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    return tmp_path / "sys"  # empty unless a machine writes hybrid PMU lists into it


def test_laptop_hybrid_cpu_and_idle_pcie_link(sysfs: Path) -> None:
    hw = MACHINES["laptop_4060"]().detect(sysfs)
    c = hw.cpu
    assert c.model == "13th Gen Intel(R) Core(TM) i5-13420H"
    assert (c.physical_cores, c.logical_cores, c.usable_cpus) == (8, 12, 12)
    assert (c.performance_cores, c.efficiency_cores) == (4, 4)
    assert c.avx2 and not c.avx512 and not c.amx and "avx_vnni" in c.simd
    assert c.simd_source == "/proc/cpuinfo"
    (g,) = hw.gpus
    assert g.name == "NVIDIA GeForce RTX 4060 Laptop GPU"
    assert g.total_vram_bytes == 8188 << 20 and g.free_vram_bytes == 7800 << 20
    assert (g.pcie_gen_current, g.pcie_gen_max, g.pcie_width_current, g.pcie_width_max) == (1, 4, 8, 8)
    assert g.pcie_link_gbps() == pytest.approx(15.75, abs=0.01)
    assert g.compute_capability == (8, 9) and g.driver_version == "550.54.14"
    assert hw.cuda_driver_version == "12.4" and hw.nvml_error is None and hw.warnings == ()
    text = hw.describe()
    assert "4 performance + 4 efficiency" in text
    assert "PCIe 4.0 x8 (link now 1.0 x8)" in text


def test_desktops(sysfs: Path) -> None:
    hw = MACHINES["desktop_3060"]().detect(sysfs)
    assert hw.cpu.performance_cores is None  # not hybrid
    assert hw.gpus[0].name == "NVIDIA GeForce RTX 3060" and hw.gpus[0].compute_capability == (8, 6)
    hw = MACHINES["desktop_4090"]().detect(sysfs)
    assert (hw.cpu.physical_cores, hw.cpu.logical_cores) == (24, 48)
    assert hw.cpu.avx512 and "avx512_vnni" in hw.cpu.simd and not hw.cpu.amx
    assert hw.primary_gpu is not None and hw.primary_gpu.total_vram_bytes == 24564 << 20


def test_h100_box_has_amx(sysfs: Path) -> None:
    hw = MACHINES["h100_box"]().detect(sysfs)
    assert hw.cpu.amx and hw.cpu.avx512
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_bf16"} <= set(hw.cpu.simd)
    assert hw.gpus[0].pcie_link_gbps() == pytest.approx(63.0, abs=0.1)
    assert hw.cuda_driver_version == "13.0"


def test_two_gpus_primary_is_the_largest(sysfs: Path) -> None:
    hw = MACHINES["two_gpu_box"]().detect(sysfs)
    assert [g.index for g in hw.gpus] == [0, 1]
    assert hw.primary_gpu is hw.gpus[1]
    assert "GPU 0" in hw.describe() and "GPU 1" in hw.describe()


def test_cpu_only_nvml_library_missing(sysfs: Path) -> None:
    m = MACHINES["cpu_only"]()
    hw = m.detect(sysfs)
    assert hw.gpus == () and hw.primary_gpu is None
    assert "NVML library not found" in (hw.nvml_error or "")
    assert "GPU     none: NVML library not found" in hw.describe()
    assert "nvmlShutdown" not in m.nvml.calls  # never initialised


def test_nvml_present_but_no_gpu(sysfs: Path) -> None:
    m = MACHINES["nvml_no_gpu"]()
    hw = m.detect(sysfs)
    assert hw.gpus == () and hw.nvml_error == "no NVIDIA GPU"
    assert m.nvml.calls[-1] == "nvmlShutdown"


@pytest.mark.parametrize("code, words", [
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
    (pynvml.NVML_ERROR_UNKNOWN, "NVML failed to start"),
])
def test_other_init_failures(sysfs: Path, code: int, words: str) -> None:
    m = desktop_3060()
    m.nvml.init_error = code
    hw = m.detect(sysfs)
    assert hw.gpus == () and words in (hw.nvml_error or "")


def test_one_field_failing_costs_that_field_only(sysfs: Path) -> None:
    m = desktop_3060()
    m.nvml.failing["nvmlDeviceGetMaxPcieLinkGeneration"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    hw = m.detect(sysfs)
    (g,) = hw.gpus
    assert g.pcie_gen_max is None and g.pcie_link_gbps() is None
    assert g.pcie_gen_current == 4 and g.total_vram_bytes == 12288 << 20 and g.name
    assert hw.warnings == ("GPU 0 PCIe max gen: Not Supported",)
    assert "warning: GPU 0 PCIe max gen: Not Supported" in hw.describe()


def test_every_nvml_query_failing_never_crashes(sysfs: Path) -> None:
    m = desktop_3060()
    for fn in ("nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion", "nvmlDeviceGetName",
               "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetCudaComputeCapability",
               "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration",
               "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetMaxPcieLinkWidth"):
        m.nvml.failing[fn] = pynvml.NVML_ERROR_GPU_IS_LOST
    hw = m.detect(sysfs)
    (g,) = hw.gpus
    assert g.index == 0 and g.name is None and g.total_vram_bytes is None
    assert hw.primary_gpu is g and hw.cuda_driver_version is None and len(hw.warnings) == 9
    hw.describe()
    json.dumps(hw.to_dict())
    # a lost handle drops the GPU; the count failing means none
    m.nvml.failing["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_GPU_IS_LOST
    assert m.detect(sysfs).nvml_error == "no NVIDIA GPU could be queried"
    m.nvml.failing["nvmlDeviceGetCount"] = pynvml.NVML_ERROR_UNKNOWN
    assert m.detect(sysfs).nvml_error == "NVML could not count the GPUs"


def test_old_pynvml_without_a_function(sysfs: Path) -> None:
    class OldNvml(FakeNvml):
        nvmlDeviceGetCudaComputeCapability = None  # type: ignore[assignment]  # calling it fails

    m = desktop_3060()
    hw = detect_hardware(OldNvml(m.nvml.gpus), m.psutil, m.cpuinfo, sysfs_root=sysfs)
    assert hw.gpus[0].compute_capability is None and hw.gpus[0].name == "NVIDIA GeForce RTX 3060"


def test_pynvml_not_installed(monkeypatch: pytest.MonkeyPatch, sysfs: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    m = desktop_3060()
    hw = detect_hardware(None, m.psutil, m.cpuinfo, sysfs_root=sysfs)
    assert hw.gpus == () and "pynvml" in (hw.nvml_error or "")


def test_psutil_without_physical_count_uses_cpuinfo(sysfs: Path) -> None:
    ps = FakePsutil(physical=None, logical=8, total=8 * GIB, available=4 * GIB, affinity=None)
    hw = detect_hardware(FakeNvml([]), ps, cpuinfo("x", X86_AVX2, smt(4)), sysfs_root=sysfs)
    assert (hw.cpu.physical_cores, hw.cpu.logical_cores, hw.cpu.usable_cpus) == (4, 8, None)
    assert hw.memory.total_bytes == 8 * GIB and hw.memory.available_bytes == 4 * GIB


def test_arm_linux_features(sysfs: Path) -> None:
    text = ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull asimddp "
            "sve i8mm bf16 sve2\nCPU implementer\t: 0x41\nCPU part\t: 0xd4f\n\nprocessor\t: 1\nFeatures\t: fp asimd\n")
    ps = FakePsutil(physical=None, logical=2, total=4 * GIB, available=3 * GIB)
    hw = detect_hardware(FakeNvml([]), ps, text, sysfs_root=sysfs, machine="aarch64")
    assert hw.cpu.neon and set(hw.cpu.simd) == {"neon", "dotprod", "sve", "sve2", "i8mm", "bf16"}
    assert hw.cpu.model == "aarch64 (implementer 0x41, part 0xd4f)" and hw.cpu.physical_cores == 2


def test_macos_sysctl(sysfs: Path) -> None:
    sysctl = ("machdep.cpu.brand_string: Apple M3 Pro\nhw.perflevel0.physicalcpu: 6\n"
              "hw.perflevel1.physicalcpu: 6\nhw.optional.arm.FEAT_DotProd: 1\n"
              "hw.optional.arm.FEAT_I8MM: 1\nhw.optional.arm.FEAT_BF16: 0\n")
    ps = FakePsutil(physical=12, logical=12, total=36 * GIB, available=20 * GIB)
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    hw = detect_hardware(nvml, ps, "", sysfs_root=sysfs, sysctl_text=sysctl, machine="arm64")
    assert hw.cpu.model == "Apple M3 Pro" and hw.cpu.simd_source == "sysctl"
    assert set(hw.cpu.simd) == {"neon", "dotprod", "i8mm"}
    assert (hw.cpu.performance_cores, hw.cpu.efficiency_cores) == (6, 6)


def test_to_dict_is_json(sysfs: Path) -> None:
    for make in MACHINES.values():
        d = json.loads(json.dumps(make().detect(sysfs).to_dict()))
        assert set(d) == {"cpu", "memory", "gpus", "nvml_error", "cuda_driver_version", "warnings"}
    d = MACHINES["h100_box"]().detect(sysfs).to_dict()
    assert d["gpus"][0]["compute_capability"] == "9.0" and "amx_tile" in d["cpu"]["simd"]


def test_real_machine() -> None:
    t = time.perf_counter()
    hw = detect_hardware()
    elapsed = time.perf_counter() - t
    print("\n" + hw.describe() + f"\n(detected in {elapsed * 1e3:.0f} ms)")
    assert hw.cpu.physical_cores >= 1 and hw.cpu.logical_cores >= hw.cpu.physical_cores
    assert hw.memory.total_bytes >= hw.memory.available_bytes > 0
    if hw.gpus:  # the GPU machine
        assert hw.nvml_error is None and all(g.name for g in hw.gpus)
    else:  # here: says why there is no GPU
        assert hw.nvml_error
        assert "GPU     none: " in hw.describe()
    json.dumps(hw.to_dict())
    assert elapsed < 2.0  # usually ~10 ms; NVML start-up without the persistence daemon is slower


def test_main_describe_real_machine(tmp_path: Path) -> None:
    no_override = tmp_path / "none.toml"
    text = main_describe(False, override_path=no_override)
    assert text.startswith("CPU ") and "\nProfile " in text and "Threads " in text
    d = json.loads(main_describe(True, override_path=no_override))
    assert d["profile"]["name"] and d["profile"]["reason"] and d["threads"] >= 1
    if not d["hardware"]["gpus"]:
        assert d["profile"]["name"] == "cpu-only"
