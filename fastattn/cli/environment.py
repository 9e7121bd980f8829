"""Facts about this machine and installation that ``info`` prints: CPU model and cores, nvcc,
triton and fastattn versions, the git commit of the source tree (and whether it had local
edits), and every CUDA device (name, SM count, memory, clocks and driver when ``nvidia-smi``
can read them). The benchmark harness records them with every measurement
(``benchmarks/fastattn_bench/environment.py``).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import torch


def _run(cmd: list[str], timeout: float = 10.0) -> Optional[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """CPUs this process may run on (affinity), which is what the CPU kernels use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def nvcc_version() -> Optional[str]:
    """``release X.Y, VX.Y.Z`` from ``nvcc --version``, or None when nvcc is absent."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        return None
    out = _run([nvcc, "--version"])
    if not out:
        return None
    for line in out.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].strip()
    return out.splitlines()[-1]


def triton_version() -> Optional[str]:
    """Triton's version, or None when it does not import."""
    try:
        import triton
    except Exception:  # noqa: BLE001  (a broken triton install is reported, not fatal)
        return None
    return getattr(triton, "__version__", "unknown")


def fastattn_version() -> str:
    """fastattn's ``__version__``."""
    import fastattn

    return getattr(fastattn, "__version__", "unknown")


def git_commit() -> dict:
    """The commit of the fastattn source tree this process imported, and whether the tree
    had uncommitted changes; ``{"commit": None}`` for an installed wheel."""
    import fastattn

    root = Path(fastattn.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    status = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cuda_devices() -> list[dict]:
    """Every visible CUDA device: name, capability, SM count, memory, and clocks/driver from
    ``nvidia-smi`` when it is installed."""
    if not torch.cuda.is_available():
        return []
    smi = {}
    query = "index,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit"
    out = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    if out:
        for line in out.splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 7 and fields[0].isdigit():
                smi[int(fields[0])] = {
                    "driver": fields[1], "sm_clock_mhz": fields[2], "max_sm_clock_mhz": fields[3],
                    "mem_clock_mhz": fields[4], "max_mem_clock_mhz": fields[5], "power_limit_w": fields[6],
                }
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({
            "index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
            "sm_count": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 2),
            **smi.get(i, {}),
        })
    return devices
