"""Detect what this device is: CPU, cores, memory, GPU arch, TensorRT version.

Every probe is guarded: a missing library or tool yields ``None``, never an error.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from edge_agent.protocol import HardwareProfile


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 0


def _gpu() -> tuple[str | None, str | None]:
    """(gpu name, arch like 'sm90') via nvidia-smi, if present."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if out.returncode != 0 or not out.stdout.strip():
        return None, None
    name, _, cap = out.stdout.strip().splitlines()[0].partition(",")
    cap = cap.strip()
    arch = "sm" + cap.replace(".", "") if cap else None
    return name.strip() or None, arch


def tensorrt_version() -> str | None:
    try:
        import tensorrt  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "absent"
        return None
    return getattr(tensorrt, "__version__", None)


def detect_hardware() -> HardwareProfile:
    """The profile this device reports in its online status."""
    gpu, arch = _gpu()
    machine = platform.machine() or "unknown"
    return HardwareProfile(
        target=f"gpu-{arch}" if arch else f"cpu-{machine}",
        cpu=_cpu_name(),
        cores=os.cpu_count() or 0,
        memory_mb=_memory_mb(),
        gpu=gpu,
        gpu_arch=arch,
        tensorrt=tensorrt_version() if arch else None,
    )
