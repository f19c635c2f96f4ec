"""Fake psutil, NVML, /proc/cpuinfo and sysfs answers for machines we do not have.

`FakeNvml` exposes the pynvml functions edge_moe.hardware calls and raises the
real pynvml exception classes, so the code under test sees what it would on a
real driver.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

from edge_moe.hardware import GIB, HardwareInfo, detect_hardware

MIB = 1 << 20


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml maps the code to its subclass


class FakePsutil:
    def __init__(self, physical: int | None, logical: int, total: int, available: int,
                 affinity: int | None = None) -> None:
        self._physical, self._logical = physical, logical
        self._mem = SimpleNamespace(total=total, available=available)
        self._affinity = affinity

    def cpu_count(self, logical: bool = True) -> int | None:
        return self._logical if logical else self._physical

    def virtual_memory(self) -> SimpleNamespace:
        return self._mem

    def Process(self) -> SimpleNamespace:  # noqa: N802 - psutil's name
        def cpu_affinity() -> list[int]:
            if self._affinity is None:
                raise AttributeError("cpu_affinity")  # as on macOS
            return list(range(self._affinity))
        return SimpleNamespace(cpu_affinity=cpu_affinity)


@dataclass
class FakeGpu:
    name: str
    total_mib: int
    free_mib: int
    pcie_gen: tuple[int, int] = (4, 4)  # current, max
    pcie_width: tuple[int, int] = (16, 16)
    cc: tuple[int, int] = (8, 9)


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    driver: str = "550.54.14"
    cuda: int = 12040
    init_error: int | None = None  # an NVML_ERROR_* code nvmlInit raises
    failing: dict[str, int] = field(default_factory=dict)  # function name -> error code
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in dir(pynvml):  # the exception classes the code may test against
            if name.startswith("NVMLError"):
                setattr(self, name, getattr(pynvml, name))

    def _call(self, fn: str, value: Any) -> Any:
        self.calls.append(fn)
        if fn in self.failing:
            raise nvml_error(self.failing[fn])
        return value

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names from here on
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self._call("nvmlDeviceGetCount", len(self.gpus))

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self._call("nvmlSystemGetDriverVersion", self.driver)

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self._call("nvmlSystemGetCudaDriverVersion", self.cuda)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:  # noqa: N802
        return self._call("nvmlDeviceGetHandleByIndex", self.gpus[i])

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:  # noqa: N802
        return self._call("nvmlDeviceGetName", h.name)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> SimpleNamespace:  # noqa: N802
        mem = SimpleNamespace(total=h.total_mib * MIB, free=h.free_mib * MIB,
                              used=(h.total_mib - h.free_mib) * MIB)
        return self._call("nvmlDeviceGetMemoryInfo", mem)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:  # noqa: N802
        return self._call("nvmlDeviceGetCudaComputeCapability", h.cc)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: FakeGpu) -> int:  # noqa: N802
        return self._call("nvmlDeviceGetCurrPcieLinkGeneration", h.pcie_gen[0])

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: FakeGpu) -> int:  # noqa: N802
        return self._call("nvmlDeviceGetMaxPcieLinkGeneration", h.pcie_gen[1])

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: FakeGpu) -> int:  # noqa: N802
        return self._call("nvmlDeviceGetCurrPcieLinkWidth", h.pcie_width[0])

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: FakeGpu) -> int:  # noqa: N802
        return self._call("nvmlDeviceGetMaxPcieLinkWidth", h.pcie_width[1])


def cpuinfo(model: str, flags: str, cores: list[tuple[int, int]]) -> str:
    """/proc/cpuinfo text: one block per (logical cpu, core id), package 0."""
    return "\n\n".join(
        f"processor\t: {cpu}\nvendor_id\t: x\nmodel name\t: {model}\nphysical id\t: 0\n"
        f"core id\t\t: {core}\nflags\t\t: {flags}" for cpu, core in cores) + "\n"


def smt(n_cores: int, first_cpu: int = 0, first_core: int = 0) -> list[tuple[int, int]]:
    """Linux numbering with 2 threads per core: cpus 0..n-1 then n..2n-1 are the siblings."""
    return [(first_cpu + i, first_core + i % n_cores) for i in range(2 * n_cores)]


X86_AVX2 = "fpu sse4_2 avx avx2 fma f16c popcnt"
X86_AVX512 = X86_AVX2 + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
X86_AMX = X86_AVX512 + " amx_bf16 amx_tile amx_int8"
X86_HYBRID = X86_AVX2 + " avx_vnni"


@dataclass
class Machine:
    """One fake machine: everything detect_hardware reads."""

    psutil: FakePsutil
    nvml: FakeNvml
    cpuinfo: str
    hybrid: tuple[str, str] | None = None  # /sys/devices/cpu_core/cpus, cpu_atom/cpus
    expected_profile: str = ""

    def detect(self, tmp: Path) -> HardwareInfo:
        """Detect this machine, with its fake sysfs in a fresh directory under `tmp`."""
        tmp.mkdir(parents=True, exist_ok=True)
        sysfs = Path(tempfile.mkdtemp(dir=tmp))
        if self.hybrid is not None:
            for pmu, cpus in zip(("cpu_core", "cpu_atom"), self.hybrid):
                (sysfs / "devices" / pmu).mkdir(parents=True, exist_ok=True)
                (sysfs / "devices" / pmu / "cpus").write_text(cpus + "\n")
        return detect_hardware(self.nvml, self.psutil, self.cpuinfo, sysfs_root=sysfs,
                               machine="x86_64")



def laptop_4060() -> Machine:
    # i5-13420H: 4 P-cores with hyper-threading (cpus 0-7) + 4 E-cores (cpus 8-11)
    cores = [(i, i // 2) for i in range(8)] + [(8 + i, 8 + i) for i in range(4)]
    return Machine(
        FakePsutil(physical=8, logical=12, total=16 * GIB, available=11 * GIB, affinity=12),
        FakeNvml([FakeGpu("NVIDIA GeForce RTX 4060 Laptop GPU", 8188, 7800,
                          pcie_gen=(1, 4), pcie_width=(8, 8))]),
        cpuinfo("13th Gen Intel(R) Core(TM) i5-13420H", X86_HYBRID, cores),
        hybrid=("0-7", "8-11"), expected_profile="laptop-8gb")


def desktop_3060() -> Machine:
    return Machine(
        FakePsutil(physical=6, logical=12, total=32 * GIB, available=27 * GIB, affinity=12),
        FakeNvml([FakeGpu("NVIDIA GeForce RTX 3060", 12288, 11500, cc=(8, 6))]),
        cpuinfo("AMD Ryzen 5 5600X 6-Core Processor", X86_AVX2, smt(6)),
        expected_profile="rtx3060-12gb")


def desktop_4090() -> Machine:
    return Machine(
        FakePsutil(physical=24, logical=48, total=128 * GIB, available=120 * GIB, affinity=48),
        FakeNvml([FakeGpu("NVIDIA GeForce RTX 4090", 24564, 23900)]),
        cpuinfo("AMD Ryzen Threadripper 7960X 24-Cores", X86_AVX512, smt(24)),
        expected_profile="rtx4090-24gb")


def two_gpu_box() -> Machine:
    # GPU 0 is the small one: the cache must go on GPU 1
    return Machine(
        FakePsutil(physical=8, logical=16, total=64 * GIB, available=60 * GIB, affinity=16),
        FakeNvml([FakeGpu("NVIDIA GeForce GTX 1650", 4096, 3900, pcie_width=(16, 16), cc=(7, 5)),
                  FakeGpu("NVIDIA GeForce RTX 3060", 12288, 12000, cc=(8, 6))]),
        cpuinfo("AMD Ryzen 7 5800X 8-Core Processor", X86_AVX2, smt(8)),
        expected_profile="rtx3060-12gb")


def cpu_only() -> Machine:
    return Machine(
        FakePsutil(physical=16, logical=32, total=64 * GIB, available=50 * GIB, affinity=32),
        FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
        cpuinfo("AMD Ryzen 9 7950X 16-Core Processor", X86_AVX512, smt(16)),
        expected_profile="cpu-only")


def nvml_no_gpu() -> Machine:
    return Machine(
        FakePsutil(physical=4, logical=8, total=16 * GIB, available=12 * GIB, affinity=8),
        FakeNvml([]),
        cpuinfo("Intel(R) Core(TM) i7-7700", X86_AVX2, smt(4)),
        expected_profile="cpu-only")


def h100_box() -> Machine:
    # the lent GPU machine: 16 cores of a Sapphire Rapids Xeon in a container, 1 thread each
    return Machine(
        FakePsutil(physical=16, logical=16, total=125 * GIB, available=110 * GIB, affinity=16),
        FakeNvml([FakeGpu("NVIDIA H100 80GB HBM3", 81559, 81000, pcie_gen=(5, 5), cc=(9, 0))],
                 driver="580.95.05", cuda=13000),
        cpuinfo("Intel(R) Xeon(R) Platinum 8480+", X86_AMX, [(i, i) for i in range(16)]),
        expected_profile="datacenter-h100")


MACHINES = {
    "laptop_4060": laptop_4060, "desktop_3060": desktop_3060, "desktop_4090": desktop_4090,
    "two_gpu_box": two_gpu_box, "cpu_only": cpu_only, "nvml_no_gpu": nvml_no_gpu,
    "h100_box": h100_box,
}
