"""Static throughput ceilings of a kernel's main loop, from per-SM throughputs of each arch.

Given the per-warp, per-iteration counts of a main loop (:func:`fastattn.buildcheck.sass.count`), the
warps of a CTA and the useful FLOPs of one iteration, each bound below is the fraction of the
arch's dense tensor-core peak that the loop could reach if only that resource limited it and
everything else overlapped perfectly (enough resident warps, no latency, no bank conflicts,
no memory-bandwidth limit):

* ``issue_bound``: every instruction takes one issue slot of its SM sub-partition;
* ``smem_bound``: shared-memory bytes (LDS/LDSM/STS, cp.async writes, wgmma operands) at the
  shared-memory bandwidth;
* ``mufu_bound``: MUFU (exp2, rcp, ...) lanes at the special-function unit rate;
* ``fp32_bound``: FFMA/FMUL/FADD lanes at the FP32 pipe rate;

each also limited by the tensor-core time of the MMA work actually issued (so MMA work
repeated across warps lowers it: a redundancy of 2 caps it at 0.5). ``static_ceiling`` is
their minimum. These are upper bounds from static counts: a *static ceiling*, never a
measured or predicted speed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SmThroughput:
    """Per-SM, per-clock throughputs of one arch (see the sources on :data:`THROUGHPUT`)."""

    arch: str
    tensor_flops: int  # dense FP16/BF16-input MMA FLOPs per clock per SM
    issue: int  # warp instructions issued per clock per SM
    smem_bytes: int  # shared-memory bytes per clock per SM
    mufu: int  # MUFU results (lanes) per clock per SM
    fp32: int  # FP32 add/multiply/FMA results (lanes) per clock per SM
    kind_rate: tuple  # tensor throughput of other input kinds, relative to FP16


# Sources:
# * Tensor cores. A100 whitepaper ("NVIDIA A100 Tensor Core GPU Architecture", 2020): a 3rd-gen
#   tensor core does 256 dense FP16 FMA/clk, four per SM: 1024 FMA = 2048 FLOP/clk/SM (312
#   TFLOPS = 108 SMs x 1.41 GHz x 2048); TF32 at half that (156 TFLOPS). H100 whitepaper
#   ("NVIDIA H100 Tensor Core GPU Architecture", 2022): the 4th-gen tensor core doubles A100's
#   dense FP16 rate per SM clock for clock: 4096 FLOP/clk/SM (989.4 TFLOPS = 132 SMs x 1.83 GHz
#   x 4096); TF32 half, FP8 double. GA102 and Ada whitepapers ("NVIDIA Ampere GA102 GPU
#   Architecture", "NVIDIA Ada GPU Architecture"): four tensor cores per SM at 1024 dense FP16
#   FLOP/clk/SM with FP16 accumulation (RTX 3090: 142 TFLOPS = 82 x 1.695 GHz x 1024; RTX 4090:
#   330 TFLOPS = 128 x 2.52 GHz x 1024); GeForce parts run FP32 accumulation at half rate, so on
#   them the figure here is the higher bound. Ada adds FP8 at twice FP16.
# * Issue: the same whitepapers: an SM has four processing blocks, each with one warp scheduler
#   dispatching one warp instruction per clock: 4 per clock per SM (sm_80 through sm_90).
# * Shared memory: CUDA C++ Programming Guide, "Shared Memory" (compute capability 5.x and later):
#   32 banks, each delivering 32 bits per clock: 128 bytes per clock per SM.
# * MUFU and FP32: CUDA C++ Programming Guide, "Arithmetic Instructions", table "Throughput of
#   Native Arithmetic Instructions (Number of Results per Clock Cycle per Multiprocessor)":
#   32-bit reciprocal, reciprocal square root, base-2 logarithm and exponential, sine, cosine:
#   16 for compute capability 8.0, 8.6, 8.9 and 9.0; 32-bit floating-point add, multiply,
#   multiply-add: 64 for 8.0, 128 for 8.6, 8.9 and 9.0.
_AMPERE_RATES = (("f16", 1.0), ("tf32", 0.5), ("int8", 2.0), ("fp64", 1 / 16), ("int1", 8.0))
_GA10X_RATES = (("f16", 1.0), ("tf32", 0.5), ("int8", 2.0), ("fp64", 1 / 64), ("int1", 8.0))
_ADA_RATES = _GA10X_RATES + (("fp8", 2.0),)
_HOPPER_RATES = (("f16", 1.0), ("tf32", 0.5), ("int8", 2.0), ("fp8", 2.0), ("fp64", 1 / 16), ("int1", 8.0))

THROUGHPUT = {
    80: SmThroughput("sm_80", 2048, 4, 128, 16, 64, _AMPERE_RATES),
    86: SmThroughput("sm_86", 1024, 4, 128, 16, 128, _GA10X_RATES),
    89: SmThroughput("sm_89", 1024, 4, 128, 16, 128, _ADA_RATES),
    90: SmThroughput("sm_90a", 4096, 4, 128, 16, 128, _HOPPER_RATES),
}
"""Per-SM throughputs by compute capability (sm_90: Hopper's wgmma peak; ``mma.sync`` on Hopper
runs below it, so an HMMA loop's ceiling there is the higher bound)."""

BOUNDS = ("issue_bound", "smem_bound", "mufu_bound", "fp32_bound")


def throughput(arch) -> SmThroughput:
    """The table entry for ``arch`` (80, "sm_80", "sm_90a", ...)."""
    text = str(arch).lower().replace("sm_", "").rstrip("a")
    return THROUGHPUT[int(text)]


def derived(counts: dict, num_warps: int, useful_flops: Optional[float]) -> dict:
    """Figures of one main-loop view that need no arch table:

    ``non_mma_per_4096_flops``: non-MMA instructions per 4096 MMA FLOPs (one HMMA.16816's
    worth) issued; ``shared_bytes_per_mma_flop``; ``mma_flops_per_cta``: MMA FLOPs all warps
    issue per iteration; ``redundancy``: that over the tile's useful FLOPs (1.0 when no warp
    repeats another's MMA work; None when the useful FLOPs are unknown). A 3xTF32 dot (fp32
    inputs at ``tf32x3`` precision) issues three MMAs per product by design: redundancy 3.
    """
    flops = counts["mma_flops"]
    per_cta = flops * num_warps
    return {
        "non_mma_per_4096_flops": round((counts["instructions"] - counts["mma"]) * 4096 / flops, 2) if flops else None,
        "shared_bytes_per_mma_flop": round(counts["shared_bytes"] / flops, 4) if flops else None,
        "mma_flops_per_cta": per_cta,
        "redundancy": round(per_cta / useful_flops, 3) if useful_flops and per_cta else None,
    }


def ceilings(counts: dict, arch, num_warps: int, useful_flops: Optional[float]) -> dict:
    """The static-ceiling fractions of tensor-core peak for one main-loop view on ``arch``.

    ``counts``: per-warp, per-iteration counts (:func:`fastattn.buildcheck.sass.count`); ``num_warps``:
    warps per CTA; ``useful_flops``: the tile's FLOPs per iteration (None: every MMA FLOP
    counted as useful). Returns :data:`BOUNDS` and ``static_ceiling`` (their minimum), each in
    [0, 1], or None for every field when the view has no known MMA work. The peak is that of
    the loop's dominant MMA input kind (FP16/BF16 for 16-bit kernels, TF32 for fp32 ones).
    """
    t = throughput(arch)
    rates = dict(t.kind_rate)
    by_kind = counts.get("mma_flops_by_kind") or {}
    if not by_kind or not counts["mma_flops"]:
        return {k: None for k in BOUNDS + ("static_ceiling",)}
    # Clocks per iteration per SM (all warps of the CTA), each resource alone.
    t_mma = num_warps * sum(f / (t.tensor_flops * rates.get(kind, 1.0)) for kind, f in by_kind.items())
    lanes_fp32 = counts["ffma"] + counts["fmul"] + counts["fadd"]
    times = {
        "issue_bound": num_warps * counts["instructions"] / t.issue,
        "smem_bound": num_warps * counts["shared_bytes"] / t.smem_bytes,
        "mufu_bound": num_warps * counts["mufu"] * 32 / t.mufu,
        "fp32_bound": num_warps * lanes_fp32 * 32 / t.fp32,
    }
    dominant = max(by_kind, key=by_kind.get)
    peak = t.tensor_flops * rates.get(dominant, 1.0)
    useful = useful_flops if useful_flops else num_warps * counts["mma_flops"]
    ideal = useful / peak  # clocks the useful work takes at peak
    out = {k: round(min(1.0, ideal / max(t_mma, v)), 4) for k, v in times.items()}
    out["static_ceiling"] = min(out.values())
    return out
