"""What a benchmark measures: FLOP and byte counts, and timing.

One implementation shared by ``python -m fastattn bench`` and the benchmark files in
``benchmarks/``.

FLOP conventions are flash-attn's, so that numbers compare with its published ones:

* attention forward = two matmuls over the score matrix,
  ``2 * B * Hq * Lq * Lk * (D + Dv)`` (``4 * B * H * L^2 * D`` for square, ``Dv == D``);
* causal counts half the score matrix (the masked half is skipped, not computed);
* backward = 2.5 x forward (five matmuls against the forward's two), forward+backward
  = 3.5 x forward.

Timing: on a GPU ``triton.testing.do_bench`` (which flushes L2 between calls), else CUDA
events with an explicit L2 flush; on a CPU ``time.perf_counter`` after a warm-up. Every
timer cycles through several independent input sets (``rotate``), so that no call finds
its inputs already in cache from the previous one.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch

BWD_FACTOR = 2.5
"""FLOPs of the attention backward pass per FLOP of the forward pass (flash-attn's count)."""

DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
_DIRECTION_FACTOR = {"fwd": 1.0, "bwd": BWD_FACTOR, "fwd+bwd": 1.0 + BWD_FACTOR}


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool = False, direction: str = "fwd", head_dim_v: Optional[int] = None) -> float:
    """FLOPs of one attention call with ``heads`` query heads (GQA does not change it).

    ``direction`` is ``"fwd"``, ``"bwd"`` or ``"fwd+bwd"``. Causal halves the count, as
    flash-attn's benchmarks do (exactly: the diagonal makes it ``L(L+1)/2`` of ``L^2``
    scores, a difference below 0.1% at the sizes benchmarked).
    """
    if direction not in _DIRECTION_FACTOR:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    dv = head_dim if head_dim_v is None else head_dim_v
    fwd = 2.0 * batch * heads * seqlen_q * seqlen_k * (head_dim + dv)
    if causal:
        fwd /= 2
    return fwd * _DIRECTION_FACTOR[direction]


def kvcache_bytes(batch: int, heads: int, heads_k: int, cache_len: int, head_dim: int,
                  element_size: int, seqlen_q: int = 1) -> float:
    """Bytes one decoding step must move: read K and V caches (``cache_len`` tokens of
    ``heads_k`` heads each) and the query, write the output. The cache dominates."""
    cache = 2.0 * batch * cache_len * heads_k * head_dim
    q_and_out = 2.0 * batch * seqlen_q * heads * head_dim
    return (cache + q_and_out) * element_size


def kvcache_flops(batch: int, heads: int, cache_len: int, head_dim: int, seqlen_q: int = 1) -> float:
    """FLOPs of one decoding step (``seqlen_q`` new queries against ``cache_len`` keys)."""
    return attention_flops(batch, heads, seqlen_q, cache_len, head_dim)


def gated_activation_bytes(tokens: int, hidden: int, element_size: int, direction: str = "fwd") -> float:
    """Bytes a fused gated activation (SwiGLU/GEGLU) moves over ``(tokens, hidden)`` tensors.

    Forward reads gate and up and writes the output (3 tensors); backward reads dout,
    gate and up and writes dgate and dup (5 tensors)."""
    tensors = {"fwd": 3, "bwd": 5, "fwd+bwd": 8}[direction]
    return float(tensors) * tokens * hidden * element_size


def feed_forward_flops(tokens: int, dim: int, hidden: int, direction: str = "fwd") -> float:
    """FLOPs of the gated MLP ``down(act(x @ Wg^T) * (x @ Wu^T))``: three ``tokens x dim x hidden``
    matmuls forward (the activation is negligible); backward computes two matmuls per forward
    one (input and weight gradients)."""
    fwd = 3 * 2.0 * tokens * dim * hidden
    return fwd * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[direction]


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Total storage bytes of ``tensors`` (for sizing the input rotation)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, 20th and 80th percentiles, and how many calls were timed."""

    median: float
    p20: float
    p80: float
    reps: int
    timer: str

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative width of the middle 60% of the timings."""
        return (self.p80 - self.p20) / self.median if self.median > 0 else 0.0


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks, as numpy's default and do_bench do.
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Sequence[float], timer: str) -> Timing:
    """A :class:`Timing` from per-call times in seconds."""
    if not samples:
        raise ValueError("no timing samples")
    s = sorted(samples)
    return Timing(statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8), len(s), timer)


def rotation_count(bytes_per_set: int, device: torch.device, cap: int = 8) -> int:
    """How many independent input sets to cycle through so that together they overflow the
    last-level cache (taken as 64 MiB on a CPU: larger than any current LLC slice a single
    process sees; GPUs flush L2 explicitly instead, so 2 sets suffice there)."""
    if device.type == "cuda":
        return 2
    llc = 64 * 2**20
    return max(1, min(cap, -(-2 * llc // max(bytes_per_set, 1))))


def time_cpu(fn: Callable[[int], object], *, warmup: int = 2, min_reps: int = 5, max_reps: int = 200,
             budget_s: float = 0.5) -> Timing:
    """Median wall time of ``fn(i)`` (``i`` = call index, for rotating inputs) on the CPU.

    Runs ``warmup`` untimed calls, then times single calls with ``time.perf_counter``
    until at least ``min_reps`` calls and ``budget_s`` seconds have passed (or ``max_reps``).
    """
    for i in range(warmup):
        fn(i)
    samples: list[float] = []
    start = time.perf_counter()
    i = warmup
    while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
        i += 1
    return summarize(samples, "perf_counter")


def time_cpu_interleaved(fns: Sequence[Callable[[int], object]], *, warmup: int = 1, min_reps: int = 5,
                         max_reps: int = 200, budget_s: float = 0.5) -> list[Timing]:
    """:func:`time_cpu` for several implementations of one case, timed in turns (one call of
    each per round), so that a change in the machine's load hits all of them alike and the
    ratios between them stay fair. Stops after ``min_reps`` rounds once ``budget_s`` per
    implementation has passed, or after ``max_reps`` rounds."""
    for i in range(warmup):
        for fn in fns:
            fn(i)
    samples: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    rounds = 0
    while rounds < max_reps and (rounds < min_reps or time.perf_counter() - start < budget_s * len(fns)):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            fn(warmup + rounds)
            out.append(time.perf_counter() - t0)
        rounds += 1
    return [summarize(s, "perf_counter (interleaved)") for s in samples]


def calls_lasting(fn: Callable[[], object], target_s: float, cap: int = 2000) -> int:
    """How many calls of ``fn`` (after one warm-up call) make one measurement last about
    ``target_s``: for calls too short to time one by one."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(cap, int(target_s / once)))


def time_in_turns(fns: Mapping[str, Callable[[], object]], reps: int,
                  calls: Optional[Mapping[str, int]] = None) -> dict[str, tuple[list[float], list[float]]]:
    """``reps`` measurements of each of ``fns``, one of every function in turn (a change in the
    machine's load hits them all alike), each the mean of ``calls[name]`` calls (default 1; no
    warm-up here). Returns ``{name: (wall, cpu)}``: seconds per call by ``time.perf_counter``
    and by the process's CPU time (``time.process_time``, which leaves out the time slices
    other processes take on a shared machine)."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            n = calls[name] if calls else 1
            c0 = time.process_time()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t1 = time.perf_counter()
            out[name][0].append((t1 - t0) / n)
            out[name][1].append((time.process_time() - c0) / n)
    return out


def time_cuda(fn: Callable[[int], object], *, warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Median time of ``fn(i)`` on the current CUDA device: ``triton.testing.do_bench`` when
    Triton runs compiled (it flushes L2 between calls), else CUDA events with a 256 MiB
    L2 flush before each call."""
    counter = iter(range(10**12))
    call = lambda: fn(next(counter))
    try:
        import os

        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            raise ImportError("the Triton interpreter cannot time CUDA kernels")
        from triton.testing import do_bench

        p20, med, p80 = do_bench(call, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
        return Timing(med / 1e3, p20 / 1e3, p80 / 1e3, -1, "triton.testing.do_bench")
    except ImportError:
        pass
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    once = max(time.perf_counter() - t0, 1e-6)
    for _ in range(max(1, int(warmup_ms / 1e3 / once))):
        call()
    reps = max(5, min(1000, int(rep_ms / 1e3 / once)))
    samples = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return summarize(samples, "cuda.Event")


def time_call(fn: Callable[[int], object], device: torch.device, *, budget_s: float = 0.5) -> Timing:
    """Time ``fn(i)`` with the timer suited to ``device`` (see the module docstring)."""
    if torch.device(device).type == "cuda":
        return time_cuda(fn, rep_ms=max(25.0, budget_s * 1e3))
    return time_cpu(fn, budget_s=budget_s)
