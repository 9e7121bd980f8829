"""The native CPU gated MLP (``fastattn.feed_forward``, backend ``cpu``) vs the unfused
eager torch MLP, same process: speed and peak memory; and the fused bias-GELU vs
``F.gelu(x + bias)`` (speed).

    python benchmarks/bench_cpu_ffn.py [--threads 1,2] [--dtypes float32,bfloat16]
                                       [--shapes 2048x1024x2816] [--reps 5] [--no-memory] [--json P]

The torch peer is what a Llama MLP runs in eager mode:
``F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)`` (GELU for the geglu
activations). Both are timed interleaved call by call (a change in machine load hits both
alike), forward under ``torch.no_grad()`` (inference) and forward+backward (training: the
backward returns the gradients of ``x`` and the three weights). Reported per row: the
median wall time, its spread ((p80 - p20) / median), GFLOP/s (``6 tokens dim hidden``
forward, 3x that forward+backward), the process CPU time per call, and the ratios torch /
fastattn of both (> 1: fastattn faster). On a shared machine the CPU-time ratio at one
thread is the steadier figure (the wall time includes waiting for other processes).

Peak memory is measured in a fresh subprocess per (implementation, case): the growth of
the peak resident set size (Linux VmHWM, reset through /proc/self/clear_refs just before
the call, after malloc_trim) over the resident size with the inputs and weights allocated
and one warm-up call made on a small shape. It counts everything the call touches: outputs,
tensors saved for the backward, the gradients, and every temporary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, feed_forward_flops  # noqa: E402
from fastattn_bench.measure import time_in_turns  # noqa: E402
from fastattn_bench.memory import peak_rss_growth  # noqa: E402

import fastattn  # noqa: E402

IMPLS = ("fastattn:cpu", "torch")
SHAPES = ((2048, 1024, 2816), (512, 2048, 5632))
"""``(tokens, dim, hidden)``: a small Llama-style MLP at a prefill batch, and a wider one."""
MEMORY_SHAPE = (8192, 1024, 2816)
"""A long batch, measured for memory only: large enough that the forward splits into blocks."""
_ACT = {"swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def make_inputs(tokens: int, dim: int, hidden: int, dtype: torch.dtype, requires_grad: bool, seed: int = 0):
    """``(x, w_gate, w_up, w_down, dout)`` with nn.Linear-like scales (fresh random, seeded)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=gen) * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    x = r(tokens, dim)
    w_gate, w_up = r(hidden, dim, scale=dim ** -0.5), r(hidden, dim, scale=dim ** -0.5)
    w_down = r(dim, hidden, scale=hidden ** -0.5)
    dout = torch.randn(tokens, dim, generator=gen).to(dtype)
    return x, w_gate, w_up, w_down, dout


def forward(impl: str, x, w_gate, w_up, w_down, activation: str = "swiglu"):
    """One forward of ``impl`` ("fastattn:cpu" or "torch")."""
    if impl == "torch":
        return F.linear(_ACT[activation](F.linear(x, w_gate)) * F.linear(x, w_up), w_down)
    return fastattn.feed_forward(x, (w_gate, w_up), w_down, activation, backend=impl.split(":", 1)[1])


def make_call(impl: str, direction: str, inputs, activation: str = "swiglu"):
    """A no-argument call running ``direction`` ("fwd" or "fwd+bwd") of ``impl``."""
    x, w_gate, w_up, w_down, dout = inputs
    if direction == "fwd":
        def fn():
            with torch.no_grad():
                return forward(impl, x, w_gate, w_up, w_down, activation)
        return fn

    def fn():
        out = forward(impl, x, w_gate, w_up, w_down, activation)
        return torch.autograd.grad(out, [x, w_gate, w_up, w_down], dout)
    return fn


def measure(shape, dtype: torch.dtype, direction: str, threads: int, reps: int = 5,
            activation: str = "swiglu") -> list[dict]:
    """Both implementations timed interleaved, ``reps`` calls each after one warm-up."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tokens, dim, hidden = shape
        inputs = make_inputs(tokens, dim, hidden, dtype, direction != "fwd")
        flops = feed_forward_flops(tokens, dim, hidden, direction)
        calls = {impl: make_call(impl, direction, inputs, activation) for impl in IMPLS}
        for fn in calls.values():
            fn()  # warm-up: first-call allocations and thread pools outside the timer
        rows = []
        for impl, (wall, cpu) in time_in_turns(calls, reps).items():
            s = sorted(wall)
            med = statistics.median(s)
            p20, p80 = s[int(0.2 * (len(s) - 1))], s[int(round(0.8 * (len(s) - 1)))]
            rows.append(dict(impl=impl, tokens=tokens, dim=dim, hidden=hidden, dtype=str(dtype).replace("torch.", ""),
                             direction=direction, activation=activation, threads=threads, median_s=med,
                             min_s=s[0], spread=(p80 - p20) / med, gflops=flops / med / 1e9,
                             cpu_median_s=statistics.median(cpu), reps=reps))
        return _with_ratios(rows)
    finally:
        torch.set_num_threads(prev)


def _with_ratios(rows: list[dict]) -> list[dict]:
    """``rows`` (one per implementation) with each one's speed-up over torch's row, in wall
    time and in process CPU time (> 1: faster than torch)."""
    ref = next(r for r in rows if r["impl"] == "torch")
    for r in rows:
        r["ratio_vs_torch"] = ref["median_s"] / r["median_s"]
        r["cpu_ratio_vs_torch"] = ref["cpu_median_s"] / r["cpu_median_s"]
    return rows


def measure_bias_gelu(shape, dtype: torch.dtype, direction: str, threads: int, reps: int = 5,
                      approximate: str = "tanh") -> list[dict]:
    """``fastattn.bias_gelu`` (cpu) vs ``F.gelu(x + bias)``, interleaved; GB/s counts the bytes
    that must move (forward: x, out; backward adds dout and dx), as for the gated activations."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        grad = direction != "fwd"
        x = torch.randn(*shape, generator=gen).to(dtype).requires_grad_(grad)
        bias = torch.randn(shape[-1], generator=gen).to(dtype).requires_grad_(grad)
        dout = torch.randn(*shape, generator=gen).to(dtype)
        impls = {"fastattn:cpu": lambda: fastattn.bias_gelu(x, bias, approximate, backend="cpu"),
                 "torch": lambda: F.gelu(x + bias, approximate=approximate)}
        moved = x.numel() * x.element_size() * (2 if direction == "fwd" else 5)  # fwd+bwd: x, out, dout, x, dx
        calls = {}
        for impl, f in impls.items():
            if grad:
                fn = (lambda f=f: torch.autograd.grad(f(), [x, bias], dout))
            else:
                def fn(f=f):
                    with torch.no_grad():
                        return f()
            fn()
            calls[impl] = fn
        rows = [dict(impl=impl, op="bias_gelu", shape="x".join(map(str, shape)), dtype=str(dtype).replace("torch.", ""),
                     direction=direction, approximate=approximate, threads=threads,
                     median_s=statistics.median(wall), cpu_median_s=statistics.median(cpu),
                     gbps=moved / statistics.median(wall) / 1e9)
                for impl, (wall, cpu) in time_in_turns(calls, reps).items()]
        return _with_ratios(rows)
    finally:
        torch.set_num_threads(prev)


# ------------------------------------------------------------------------------ peak memory

_MEMORY_SETUP = """
import torch
from bench_cpu_ffn import make_call, make_inputs
torch.set_num_threads({threads})
dtype = getattr(torch, {dtype!r})
grad = {direction!r} != "fwd"
make_call({impl!r}, {direction!r}, make_inputs(64, 64, 128, dtype, grad), {activation!r})()  # imports, pools
call = make_call({impl!r}, {direction!r}, make_inputs({tokens}, {dim}, {hidden}, dtype, grad), {activation!r})
"""


def peak_memory(impl: str, shape, dtype: str, direction: str, activation: str = "swiglu",
                threads: int = 1) -> Optional[int]:
    """Bytes by which one call raises the peak RSS of a fresh process over its RSS with the
    inputs allocated (Linux only, :func:`fastattn_bench.memory.peak_rss_growth`); ``None`` if
    the child failed."""
    tokens, dim, hidden = shape
    return peak_rss_growth(_MEMORY_SETUP.format(impl=impl, tokens=tokens, dim=dim, hidden=hidden, dtype=dtype,
                                                direction=direction, activation=activation, threads=threads))


def _shape_name(shape) -> str:
    return "x".join(str(s) for s in shape)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--directions", default="fwd,fwd+bwd")
    p.add_argument("--shapes", default=",".join(_shape_name(s) for s in SHAPES),
                   help="tokens x dim x hidden, comma separated")
    p.add_argument("--memory-shapes", default=",".join(_shape_name(s) for s in (*SHAPES, MEMORY_SHAPE)),
                   help="shapes of the peak-memory rows (the timing shapes and a long batch)")
    p.add_argument("--activation", default="swiglu", choices=sorted(_ACT))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--bias-gelu-shapes", default="2048x4096",
                   help="rows x cols of the bias-GELU timing (empty: skip it)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-time", action="store_true")
    p.add_argument("--json", help="write every row and the environment here")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")
    directions = args.directions.split(",")
    rows, mem_rows = [], []
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}", flush=True)
    if not args.no_time:
        for threads in (int(t) for t in args.threads.split(",")):
            for shape in shapes:
                for dt in dtypes:
                    for direction in directions:
                        for r in measure(shape, getattr(torch, dt), direction, threads, args.reps, args.activation):
                            rows.append(r)
                            print(f"{_shape_name(shape):<16} {dt:<9} {direction:<8} thr={threads} {r['impl']:<13} "
                                  f"{r['gflops']:7.1f} GFLOP/s median {r['median_s'] * 1e3:8.1f} ms "
                                  f"spread {r['spread']:.2f}  x{r['ratio_vs_torch']:.2f} vs torch | "
                                  f"cpu {r['cpu_median_s'] * 1e3:8.1f} ms x{r['cpu_ratio_vs_torch']:.2f}", flush=True)
    if not args.no_time and args.bias_gelu_shapes:
        for threads in (int(t) for t in args.threads.split(",")):
            for shape in (tuple(int(v) for v in s.split("x")) for s in args.bias_gelu_shapes.split(",")):
                for dt in dtypes:
                    for direction in directions:
                        for r in measure_bias_gelu(shape, getattr(torch, dt), direction, threads, args.reps):
                            rows.append(r)
                            print(f"bias_gelu {r['shape']:<10} {dt:<9} {direction:<8} thr={threads} {r['impl']:<13} "
                                  f"{r['gbps']:6.2f} GB/s median {r['median_s'] * 1e3:8.2f} ms "
                                  f"x{r['ratio_vs_torch']:.2f} vs torch | cpu x{r['cpu_ratio_vs_torch']:.2f}",
                                  flush=True)
    if not args.no_memory:
        for shape in (tuple(int(v) for v in s.split("x")) for s in args.memory_shapes.split(",")):
            for dt in dtypes:
                for direction in directions:
                    peaks = {impl: peak_memory(impl, shape, dt, direction, args.activation) for impl in IMPLS}
                    ok = all(v is not None for v in peaks.values())
                    ratio = peaks["fastattn:cpu"] / peaks["torch"] if ok and peaks["torch"] else None
                    for impl, b in peaks.items():
                        mem_rows.append(dict(impl=impl, shape=_shape_name(shape), dtype=dt, direction=direction,
                                             activation=args.activation, peak_extra_bytes=b,
                                             ratio_to_torch=ratio if impl == "fastattn:cpu" else 1.0))
                    fmt = " ".join(f"{k} {'failed' if v is None else f'{v / 2**20:.1f} MiB'}" for k, v in peaks.items())
                    print(f"peak memory {_shape_name(shape):<16} {dt:<9} {direction:<8} {fmt}"
                          + ("" if ratio is None else f"  fastattn/torch {ratio:.2f}"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(), "timing": rows, "memory": mem_rows},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
