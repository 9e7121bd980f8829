"""The environment a measurement was taken in, recorded so that numbers can be cited.

:func:`environment` returns a JSON-ready dict: device (name, SM count, memory, clocks
when ``nvidia-smi`` can read them), driver, CUDA runtime and nvcc, torch, triton and
fastattn versions, the git commit of the source tree (and whether it had local edits),
OS, CPU model and cores, Python, and the exact command line. The facts themselves are the
ones ``python -m fastattn info`` prints (:mod:`fastattn.cli.environment`).
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

import torch

from fastattn.cli.environment import (
    cpu_cores,
    cpu_model,
    cuda_devices,
    fastattn_version,
    git_commit,
    nvcc_version,
    triton_version,
)


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
