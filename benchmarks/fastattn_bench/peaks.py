"""Peak throughput of a device: the denominator of every "% of peak" column.

Known GPUs come from a table of vendor datasheet figures (dense tensor-core rates: no
2:4 sparsity; boost clocks). For ``float32`` the table gives the TF32 tensor-core rate,
since that is what GPU attention kernels (and torch's matmuls with TF32 enabled) run fp32
matmuls on; the plain FP32 SIMT rate is kept alongside as ``fp32_simt``.

Any other device (every CPU, an unlisted GPU) gets a *measured* peak: the best of a few
large matmuls in the dtype (TFLOP/s) and of a large tensor copy (GB/s, bytes read plus
written). Measured peaks are what this machine reaches with torch's own kernels, so
"% of peak" there means "% of what torch's matmul/copy reach here", and the record says so.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch


@dataclass(frozen=True)
class Peak:
    """Peak TFLOP/s per dtype name (``"float16"``, ``"bfloat16"``, ``"float32"``) and GB/s."""

    device: str
    tflops: dict = field(default_factory=dict)
    gbps: Optional[float] = None
    source: str = "datasheet"

    def tflops_for(self, dtype: torch.dtype | str) -> Optional[float]:
        """Peak TFLOP/s for ``dtype`` (a torch dtype or its name), or None if unknown."""
        name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
        return self.tflops.get(name)

    def as_dict(self) -> dict:
        """JSON-ready form (for the ``peak`` entry of ``bench --json``)."""
        return asdict(self)


def _gpu(name, fp16, bf16, tf32, fp32_simt, gbps):
    return name, {"float16": fp16, "bfloat16": bf16, "float32": tf32, "fp32_simt": fp32_simt}, gbps


# (name, per-dtype TFLOP/s, GB/s). Matched against torch.cuda.get_device_name() by
# _match(): the most specific entry first (e.g. "H100 NVL" before "H100 PCIe" before "H100").
PEAKS_TABLE = [
    _gpu("B200", 2250, 2250, 1100, 80, 8000),
    _gpu("H200", 989.4, 989.4, 494.7, 66.9, 4800),
    _gpu("H100 NVL", 835, 835, 417.5, 60, 3900),
    _gpu("H100 PCIe", 756.5, 756.5, 378, 51.2, 2000),
    _gpu("H100", 989.4, 989.4, 494.7, 66.9, 3350),  # SXM5
    _gpu("H800", 989.4, 989.4, 494.7, 66.9, 3350),
    _gpu("A100 80GB PCIe", 312, 312, 156, 19.5, 1935),
    _gpu("A100 PCIe", 312, 312, 156, 19.5, 1555),  # 40 GB
    _gpu("A100 80GB", 312, 312, 156, 19.5, 2039),  # SXM4
    _gpu("A100", 312, 312, 156, 19.5, 1555),  # SXM4 40 GB
    _gpu("A800", 312, 312, 156, 19.5, 2039),
    _gpu("L40S", 362.05, 362.05, 183, 91.6, 864),
    _gpu("L40", 181.05, 181.05, 90.5, 90.5, 864),
    _gpu("L4", 121, 121, 60, 30.3, 300),
    _gpu("A10", 125, 125, 62.5, 31.2, 600),
    _gpu("RTX 4090", 165.2, 165.2, 82.6, 82.6, 1008),
    _gpu("RTX 3090", 71, 71, 35.6, 35.6, 936),
    _gpu("V100", 125, None, None, 15.7, 900),  # no bf16, no TF32
    _gpu("T4", 65, None, None, 8.1, 320),
]


def _match(device_name: str):
    # Whole words only, so that "A10" does not match an "A10G" or "L4" an "L40".
    upper = device_name.upper()
    for name, tflops, gbps in PEAKS_TABLE:
        if all(re.search(rf"(?<![A-Z0-9]){re.escape(word.upper())}(?![A-Z0-9])", upper) for word in name.split()):
            return name, tflops, gbps
    return None


def table_peak(device_name: str) -> Optional[Peak]:
    """The datasheet peak of a GPU whose name contains a table entry, else None."""
    hit = _match(device_name)
    if hit is None:
        return None
    name, tflops, gbps = hit
    return Peak(device=name, tflops={k: v for k, v in tflops.items() if v is not None}, gbps=float(gbps),
                source="datasheet (dense tensor-core rates; float32 = TF32)")


def _best_of(fn, device: torch.device, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measured_matmul_tflops(dtype: torch.dtype, device: torch.device, n: Optional[int] = None, reps: int = 3) -> float:
    """Best TFLOP/s of an ``n x n x n`` matmul in ``dtype`` on ``device`` (2 n^3 FLOPs)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = _best_of(lambda: torch.mm(a, b), device, reps)
    return 2.0 * n**3 / seconds / 1e12


def measured_copy_gbps(device: torch.device, nbytes: Optional[int] = None, reps: int = 3) -> float:
    """Best GB/s of a large tensor copy on ``device`` (bytes read + bytes written)."""
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _best_of(lambda: dst.copy_(src), device, reps)
    return 2.0 * nbytes / seconds / 1e9


_MEASURED: dict = {}


def measured_peak(device: torch.device, dtypes=(torch.float32,)) -> Peak:
    """Measure (once per process, per device and dtype) what torch's matmul and copy reach."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    key = (str(device),)
    entry = _MEASURED.setdefault(key, {"tflops": {}, "gbps": None})
    for dt in dtypes:
        dname = str(dt).replace("torch.", "")
        if dname not in entry["tflops"]:
            entry["tflops"][dname] = round(measured_matmul_tflops(dt, device), 4)
    if entry["gbps"] is None:
        entry["gbps"] = round(measured_copy_gbps(device), 2)
    return Peak(device=name, tflops=dict(entry["tflops"]), gbps=entry["gbps"],
                source="measured here: best of torch.mm (TFLOP/s) and tensor copy (GB/s)")


def _cpu_name() -> str:
    from fastattn.cli.environment import cpu_model

    return cpu_model()


def device_peak(device: torch.device | str, dtypes=(torch.float32,)) -> Peak:
    """The peak of ``device``: the datasheet entry for a listed GPU, else measured here."""
    device = torch.device(device)
    if device.type == "cuda":
        hit = table_peak(torch.cuda.get_device_name(device))
        if hit is not None:
            return hit
    return measured_peak(device, dtypes)
