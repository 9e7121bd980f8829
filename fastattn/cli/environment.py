"""The environment a measurement was taken in, recorded so that numbers can be cited.

:func:`environment` returns a JSON-ready dict: device (name, SM count, memory, clocks
when ``nvidia-smi`` can read them), driver, CUDA runtime and nvcc, torch, triton and
fastattn versions, the git commit of the source tree (and whether it had local edits),
OS, CPU model and cores, Python, and the exact command line.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
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


def command_line() -> str:
    """The exact command that is running, as a shell would take it back."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py") and "fastattn" in argv[0]:
        argv = ["-m", "fastattn"] + argv[1:]
    elif argv and argv[0].endswith(("pytest", "py.test")):
        argv = ["-m", "pytest"] + argv[1:]
    return shlex.join([sys.executable] + argv)


def environment(device: str | torch.device = "cpu") -> dict:
    """The full record of where and how a measurement is taken (see the module docstring)."""
    device = torch.device(device)
    gpus = cuda_devices()
    env = {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "device_type": device.type,
        "device_name": cpu_model() if device.type == "cpu" else (gpus[device.index or 0]["name"] if gpus else None),
        "sm_count": None,
        "clocks": None,
        "driver": None,
        "cuda_runtime": torch.version.cuda,
        "nvcc": nvcc_version(),
        "torch": torch.__version__,
        "triton": triton_version(),
        "fastattn": fastattn_version(),
        **{f"git_{k}": v for k, v in git_commit().items()},
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine skews CPU timings: the 1/5/15-minute load averages say how much.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": gpus,
        "env_vars": {k: os.environ[k] for k in ("TRITON_INTERPRET", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                     if k in os.environ},
    }
    if device.type == "cuda" and gpus:
        gpu = gpus[device.index or 0]
        env["sm_count"] = gpu["sm_count"]
        env["driver"] = gpu.get("driver")
        if "sm_clock_mhz" in gpu:
            env["clocks"] = {k: gpu[k] for k in ("sm_clock_mhz", "max_sm_clock_mhz", "mem_clock_mhz", "max_mem_clock_mhz")}
    return env
