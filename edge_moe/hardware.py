"""What machine are we on: CPU, RAM and NVIDIA GPUs, detected without root.

Every backend is injectable (`detect_hardware(nvml=..., psutil_mod=..., ...)`)
so tests can describe machines we do not have. Detection never raises for a
missing or broken backend: a field NVML cannot give becomes None (and a line
in `warnings`), and a machine without NVML or without a GPU gets `gpus=()`
with `nvml_error` saying why.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30

# Per-lane, per-direction payload rate in GB/s after line encoding (8b/10b up to
# gen 2, 128b/130b from gen 3, FLIT from gen 6): the ceiling a H2D copy can approach.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}

# /proc/cpuinfo spellings (x86 "flags", ARM "Features") -> our names. Only
# features the ggml CPU kernels choose code paths by.
_SIMD_NAMES = {
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx_vnni": "avx_vnni",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile", "amx_bf16": "amx_bf16", "amx_int8": "amx_int8",
    "asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm",
    "bf16": "bf16", "sve": "sve", "sve2": "sve2",
}
# macOS `sysctl hw.optional` keys -> our names
_SYSCTL_SIMD = {
    "hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2", "hw.optional.fma": "fma",
    "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512vl": "avx512vl", "hw.optional.avx512vnni": "avx512_vnni",
    "hw.optional.neon": "neon", "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str  # platform.machine(): x86_64, aarch64, arm64, AMD64
    physical_cores: int
    logical_cores: int
    usable_cpus: int | None  # this process's CPU affinity (containers, taskset); None if unknown
    performance_cores: int | None  # physical P-cores on hybrid CPUs; None when not hybrid/unknown
    efficiency_cores: int | None
    simd: tuple[str, ...]  # sorted names from _SIMD_NAMES values
    simd_source: str  # where `simd` came from: "/proc/cpuinfo", "sysctl", "none"

    @property
    def avx2(self) -> bool:
        return "avx2" in self.simd

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.simd

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.simd

    @property
    def neon(self) -> bool:
        return "neon" in self.simd


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int  # as the OS says now (some containers grow it as memory is used)
    available_bytes: int


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str | None
    total_vram_bytes: int | None
    free_vram_bytes: int | None
    pcie_gen_current: int | None  # laptops drop the link to gen 1 at idle: plan with the max
    pcie_gen_max: int | None
    pcie_width_current: int | None
    pcie_width_max: int | None
    driver_version: str | None
    compute_capability: tuple[int, int] | None

    def pcie_link_gbps(self) -> float | None:
        """Theoretical one-direction bandwidth of the link at its max gen and width."""
        if self.pcie_gen_max is None or self.pcie_width_max is None:
            return None
        lane = PCIE_LANE_GBPS.get(self.pcie_gen_max)
        return None if lane is None else lane * self.pcie_width_max


@dataclass(frozen=True)
class HardwareInfo:
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: tuple[GpuInfo, ...]
    nvml_error: str | None  # why `gpus` is empty; None when NVML answered with GPUs
    cuda_driver_version: str | None  # highest CUDA version the driver supports, e.g. "12.4"
    warnings: tuple[str, ...] = ()  # fields that could not be read, one line each

    @property
    def primary_gpu(self) -> GpuInfo | None:
        """The GPU the expert cache goes on: the one with the most VRAM (lowest index on ties)."""
        known = [g for g in self.gpus if g.total_vram_bytes is not None]
        if not known:
            return self.gpus[0] if self.gpus else None
        return max(known, key=lambda g: (g.total_vram_bytes, -g.index))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for g in d["gpus"]:
            cc = g["compute_capability"]
            g["compute_capability"] = None if cc is None else f"{cc[0]}.{cc[1]}"
        d["cpu"]["simd"] = list(self.cpu.simd)
        d["gpus"] = list(d["gpus"])
        d["warnings"] = list(self.warnings)
        return d

    def describe(self) -> str:
        c, m = self.cpu, self.memory
        cores = f"{c.physical_cores} physical cores, {c.logical_cores} logical"
        if c.performance_cores is not None:
            cores += f" ({c.performance_cores} performance + {c.efficiency_cores or 0} efficiency)"
        if c.usable_cpus is not None and c.usable_cpus != c.logical_cores:
            cores += f", {c.usable_cpus} usable by this process"
        simd = " ".join(c.simd) if c.simd else f"unknown ({c.simd_source})"
        lines = [
            f"CPU     {c.model} ({c.arch}): {cores}",
            f"        SIMD: {simd}",
            f"Memory  {_gib(m.total_bytes)} total, {_gib(m.available_bytes)} available",
        ]
        if not self.gpus:
            lines.append(f"GPU     none: {self.nvml_error or 'no NVIDIA GPU'}")
        for g in self.gpus:
            lines.append(f"GPU {g.index}   {_describe_gpu(g)}")
        if self.gpus and self.cuda_driver_version:
            lines.append(f"        CUDA driver supports up to {self.cuda_driver_version}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def _describe_gpu(g: GpuInfo) -> str:
    s = f"{g.name or '?'}, {_gib(g.total_vram_bytes)} VRAM ({_gib(g.free_vram_bytes)} free)"
    gen, width = g.pcie_gen_max, g.pcie_width_max
    s += f", PCIe {gen or '?'}.0 x{width or '?'}"
    if (g.pcie_gen_current, g.pcie_width_current) != (gen, width):
        s += f" (link now {g.pcie_gen_current or '?'}.0 x{g.pcie_width_current or '?'})"
    if (bw := g.pcie_link_gbps()) is not None:
        s += f" ~{bw:.1f} GB/s per direction"
    if g.compute_capability:
        s += f", sm_{g.compute_capability[0]}{g.compute_capability[1]}"
    if g.driver_version:
        s += f", driver {g.driver_version}"
    return s


# ---------------------------------------------------------------- CPU and RAM

def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor (blank-line separated)."""
    blocks = []
    for chunk in text.split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _parse_cpu_list(text: str) -> list[int]:
    """Kernel CPU list syntax: "0-3,8,10-11"."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _hybrid_cores(sysfs: Path, blocks: list[dict[str, str]]) -> tuple[int | None, int | None]:
    """Physical P- and E-cores of an Intel hybrid CPU, from the perf PMU cpu lists."""
    try:
        p_cpus = _parse_cpu_list((sysfs / "devices/cpu_core/cpus").read_text())
        e_cpus = _parse_cpu_list((sysfs / "devices/cpu_atom/cpus").read_text())
    except (OSError, ValueError):
        return None, None
    # logical cpu -> physical core: hyper-threads of one P-core share (physical id, core id)
    core_of = {}
    for b in blocks:
        if "processor" in b and "core id" in b:
            core_of[int(b["processor"])] = (b.get("physical id", "0"), b["core id"])

    def physical(cpus: list[int]) -> int:
        return len({core_of.get(c, ("cpu", str(c))) for c in cpus})

    return physical(p_cpus), physical(e_cpus)


def _run_sysctl() -> str:
    names = ["machdep.cpu.brand_string", "hw.perflevel0.physicalcpu",
             "hw.perflevel1.physicalcpu", "hw.optional"]
    try:  # unknown names go to stderr; the known ones still print
        return subprocess.run(["sysctl", *names], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _parse_sysctl(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def detect_cpu(psutil_mod: Any, cpuinfo_text: str | None = None, sysfs_root: Path | None = None,
               sysctl_text: str | None = None, machine: str | None = None) -> CpuInfo:
    host = platform.processor() if machine is None else ""  # a faked machine must not see ours
    machine = machine or platform.machine() or "unknown"
    if sysctl_text is None and cpuinfo_text is None and sys.platform == "darwin":
        sysctl_text = _run_sysctl()  # only for the real machine: a fake stays fake on a Mac
    if cpuinfo_text is None and sys.platform.startswith("linux"):
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo_text = None
    blocks = _cpuinfo_blocks(cpuinfo_text or "")
    sysctl = _parse_sysctl(sysctl_text or "")

    logical = _int_or_none(psutil_mod.cpu_count(logical=True)) or len(blocks) or 1
    physical = _int_or_none(psutil_mod.cpu_count(logical=False))
    if physical is None:  # psutil cannot tell on some ARM kernels: count distinct cores ourselves
        cores = {(b.get("physical id"), b["core id"]) for b in blocks if "core id" in b}
        physical = len(cores) or logical
    try:
        usable: int | None = len(psutil_mod.Process().cpu_affinity())
    except Exception:  # psutil has no cpu_affinity on macOS
        usable = None

    model = next((b[k] for b in blocks for k in ("model name", "Model", "Hardware") if k in b), "")
    if not model and blocks and "CPU implementer" in blocks[0]:  # ARM Linux names no model
        model = f"{machine} (implementer {blocks[0]['CPU implementer']}, " \
                f"part {blocks[0].get('CPU part', '?')})"
    model = model or sysctl.get("machdep.cpu.brand_string", "") or host or machine

    simd: set[str] = set()
    source = "none"
    if blocks:
        flags = blocks[0].get("flags") or blocks[0].get("Features") or ""
        simd = {_SIMD_NAMES[f] for f in flags.split() if f in _SIMD_NAMES}
        source = "/proc/cpuinfo"
    elif sysctl:
        simd = {name for key, name in _SYSCTL_SIMD.items() if sysctl.get(key) == "1"}
        if machine in ("arm64", "aarch64"):
            simd.add("neon")  # every 64-bit ARM core has Advanced SIMD
        source = "sysctl"
    elif machine in ("arm64", "aarch64"):
        simd, source = {"neon"}, "architecture"

    perf, eff = (None, None)
    if sys.platform.startswith("linux") or sysfs_root is not None:
        perf, eff = _hybrid_cores(sysfs_root or Path("/sys"), blocks)
    if perf is None and "hw.perflevel1.physicalcpu" in sysctl:  # Apple silicon P/E clusters
        perf = _int_or_none(sysctl.get("hw.perflevel0.physicalcpu"))
        eff = _int_or_none(sysctl.get("hw.perflevel1.physicalcpu"))
    return CpuInfo(model=model, arch=machine, physical_cores=physical, logical_cores=logical,
                   usable_cpus=usable, performance_cores=perf, efficiency_cores=eff,
                   simd=tuple(sorted(simd)), simd_source=source)


def detect_memory(psutil_mod: Any) -> MemoryInfo:
    vm = psutil_mod.virtual_memory()
    return MemoryInfo(total_bytes=int(vm.total), available_bytes=int(vm.available))


# ---------------------------------------------------------------- NVIDIA GPUs

def _nvml_init_error(nvml: Any, e: Exception) -> str:
    if isinstance(e, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return "NVML library not found (no NVIDIA driver installed)"
    if isinstance(e, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return "NVIDIA driver not loaded"
    if isinstance(e, getattr(nvml, "NVMLError_NoPermission", ())):
        return "no permission to use NVML"
    return f"NVML failed to start: {e}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def detect_gpus(nvml: Any) -> tuple[tuple[GpuInfo, ...], str | None, str | None, tuple[str, ...]]:
    """(gpus, why there are none, CUDA driver version, warnings). Never raises."""
    warnings: list[str] = []

    def ask(what: str, fn: str, *args: Any) -> Any:
        # one failing query (NotSupported on laptops, old pynvml without the function)
        # costs that field only
        try:
            return getattr(nvml, fn)(*args)
        except Exception as e:  # any backend error: detection must not crash
            warnings.append(f"{what}: {_text(e) or type(e).__name__}")
            return None

    try:
        nvml.nvmlInit()
    except Exception as e:  # a fake or broken pynvml may raise anything
        return (), _nvml_init_error(nvml, e), None, ()
    try:
        count = ask("GPU count", "nvmlDeviceGetCount")
        if not count:
            why = "no NVIDIA GPU" if count == 0 else "NVML could not count the GPUs"
            return (), why, None, tuple(warnings)
        driver = ask("driver version", "nvmlSystemGetDriverVersion")
        cuda = ask("CUDA driver version", "nvmlSystemGetCudaDriverVersion")
        cuda_version = None if cuda is None else f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
        gpus = []
        for i in range(int(count)):
            h = ask(f"GPU {i}", "nvmlDeviceGetHandleByIndex", i)
            if h is None:
                continue
            name = ask(f"GPU {i} name", "nvmlDeviceGetName", h)
            mem = ask(f"GPU {i} memory", "nvmlDeviceGetMemoryInfo", h)
            cc = ask(f"GPU {i} compute capability", "nvmlDeviceGetCudaComputeCapability", h)
            gpus.append(GpuInfo(
                index=i,
                name=None if name is None else _text(name),
                total_vram_bytes=None if mem is None else int(mem.total),
                free_vram_bytes=None if mem is None else int(mem.free),
                pcie_gen_current=ask(f"GPU {i} PCIe gen", "nvmlDeviceGetCurrPcieLinkGeneration", h),
                pcie_gen_max=ask(f"GPU {i} PCIe max gen", "nvmlDeviceGetMaxPcieLinkGeneration", h),
                pcie_width_current=ask(f"GPU {i} PCIe width", "nvmlDeviceGetCurrPcieLinkWidth", h),
                pcie_width_max=ask(f"GPU {i} PCIe max width", "nvmlDeviceGetMaxPcieLinkWidth", h),
                driver_version=None if driver is None else _text(driver),
                compute_capability=None if cc is None else (int(cc[0]), int(cc[1])),
            ))
        why = None if gpus else "no NVIDIA GPU could be queried"
        return tuple(gpus), why, cuda_version, tuple(warnings)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing to do about a failed shutdown
            pass


def detect_hardware(nvml: Any = None, psutil_mod: Any = None, cpuinfo_text: str | None = None, *,
                    sysfs_root: Path | None = None, sysctl_text: str | None = None,
                    machine: str | None = None) -> HardwareInfo:
    """Detect this machine; pass fakes for any backend to describe another one."""
    if psutil_mod is None:
        import psutil as psutil_mod
    cpu = detect_cpu(psutil_mod, cpuinfo_text, sysfs_root, sysctl_text, machine)
    memory = detect_memory(psutil_mod)
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return HardwareInfo(cpu, memory, (), "nvidia-ml-py (pynvml) is not installed", None)
    gpus, why, cuda, warnings = detect_gpus(nvml)
    return HardwareInfo(cpu, memory, gpus, why, cuda, warnings)


def main_describe(as_json: bool, *, hw: HardwareInfo | None = None,
                  override_path: Path | None = None) -> str:
    """`edge-moe profile`: the detected hardware and the profile that matches it."""
    from edge_moe.profiles import resolve_threads, select_profile

    hw = hw or detect_hardware()
    match = select_profile(hw, override_path=override_path)
    threads = resolve_threads(match.profile, hw)
    if as_json:
        return json.dumps({"hardware": hw.to_dict(), "profile": match.to_dict(),
                           "threads": threads}, indent=2)
    return f"{hw.describe()}\n\n{match.describe()}\nThreads {threads} for the CPU experts"
