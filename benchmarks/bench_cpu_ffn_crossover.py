"""``feed_forward`` and ``bias_gelu`` on the CPU: fastattn's native route vs torch's own eager
ops, side by side in one process, over the sizes ``auto`` must decide between them (from one
decoding token of a small model to a training batch).

    python benchmarks/bench_cpu_ffn_crossover.py [--threads 1,2] [--dtypes float32,bfloat16,float16]
                                                 [--ops feed_forward,bias_gelu] [--reps 9] [--write]
                                                 [--json PATH]

For each (op, dtype, direction, thread count, size) two routes are timed call by call in turns
(a change in machine load hits both alike):

* ``fastattn``: what ``auto`` runs when it keeps the native route: the ``cpu`` backend's
  forward called directly (forward, no gradient: the public function's eager route), or the
  custom op with its autograd formula and the backward (``fwd+bwd``, the gradients of every
  input);
* ``torch``: :func:`~fastattn.backends.cpu.ffn_crossover.torch_feed_forward` /
  :func:`~fastattn.backends.cpu.ffn_crossover.torch_bias_gelu`, what ``auto`` runs instead.

Both exclude what the public function does before either (argument checks, backend choice),
which the two share. Each time is the median of ``--reps`` measurements, each the mean of
enough calls to last about a millisecond, in process CPU time: on a machine shared with other
jobs the wall time also counts the time slices they take (a parallel region waits for its
slowest thread), which says nothing about either route; the wall-time medians and their ratio
are recorded beside it. ``--write`` stores the ratios (torch's median over
fastattn's: below 1, torch is faster and ``auto`` uses it) as
``fastattn/backends/cpu/ffn_crossover.json``, which ``auto`` reads through the size floors
:func:`~fastattn.backends.cpu.ffn_crossover.floors` derives from them (printed at the end).
The native kernels pick their instruction set when the module loads (the record names the CPU
and its best ISA; ``FASTATTN_CPU_ISA`` does not change them). ``feed_forward`` runs
SwiGLU, ``bias_gelu`` the tanh GELU (GPT-2's); the other activations cost the same GEMMs and
nearly the same elementwise work.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastattn_bench.crossover import run_record, store  # noqa: E402
from fastattn_bench.measure import calls_lasting, time_in_turns  # noqa: E402

from fastattn.backends.cpu import attention as cpu_attention  # noqa: E402
from fastattn.backends.cpu import ffn as cpu_ffn  # noqa: E402
from fastattn.backends.cpu.ffn_crossover import (  # noqa: E402
    TABLE,
    feed_forward_size,
    floors,
    torch_bias_gelu,
    torch_feed_forward,
)
from fastattn.ops import ffn as ops  # noqa: E402

OPS = ("feed_forward", "bias_gelu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DIRECTIONS = ("fwd", "fwd+bwd")
FF_SHAPES = tuple((t, d, h) for d, h in ((64, 128), (512, 1408)) for t in (1, 4, 16, 64, 256, 1024))
"""``(tokens, dim, hidden)``: a tiny MLP (the 64 x 128 of the earlier measurement) and the MLP of
benchmarks/bench_cpu_generate.py's small Llama, from one decoding token to a batch of 1024."""
BG_SHAPES = ((1, 768), *((t, 3072) for t in (1, 4, 16, 64, 256, 1024, 4096)))
"""``(rows, cols)`` of bias-GELU: one token of GPT-2 small's width and of its MLP, up to a batch."""


def _case(op: str, shape, dtype: torch.dtype, grad: bool):
    """``(fastattn route, torch route, size)``: two no-argument calls and the lookup size."""
    gen = torch.Generator().manual_seed(sum(shape))

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=gen) * scale).to(dtype).requires_grad_(grad)

    if op == "feed_forward":
        tokens, dim, hidden = shape
        x, dout = r(tokens, dim), torch.randn(tokens, dim, generator=gen).to(dtype)
        w = (r(hidden, dim, scale=dim ** -0.5), r(hidden, dim, scale=dim ** -0.5), r(dim, hidden, scale=hidden ** -0.5))
        inputs = (x, *w)
        native = (lambda: cpu_ffn.feed_forward_fwd(x, *w, "swiglu", "none")[0]) if not grad else \
            (lambda: ops.feed_forward(x, *w, "swiglu", "cpu"))
        other = lambda: torch_feed_forward(x, *w, "swiglu")  # noqa: E731
        size = feed_forward_size(tokens, dim, hidden, dim)
    else:
        x, bias, dout = r(*shape, scale=2.0), r(shape[-1]), torch.randn(*shape, generator=gen).to(dtype)
        inputs = (x, bias)
        native = (lambda: cpu_ffn.bias_gelu_fwd(x, bias, "tanh")) if not grad else \
            (lambda: ops.bias_gelu(x, bias, "tanh", "cpu"))
        other = lambda: torch_bias_gelu(x, bias, "tanh")  # noqa: E731
        size = x.numel()

    def wrap(fn):
        if grad:
            return lambda: torch.autograd.grad(fn(), inputs, dout)

        def call():
            with torch.no_grad():
                return fn()
        return call

    return wrap(native), wrap(other), size


def measure(op: str, shape, dtype: torch.dtype, direction: str, threads: int, reps: int) -> dict:
    """One case: the two routes timed in turns; medians and the ratio torch / fastattn."""
    torch.set_num_threads(threads)
    native, other, size = _case(op, shape, dtype, direction == "fwd+bwd")
    routes = {"fastattn": native, "torch": other}
    # The same problem, to the dtype's rounding (summed 16-bit gradients, e.g. of a bias, round
    # differently in the two routes: the tolerance scales with their size).
    first = {name: fn() for name, fn in routes.items()}
    a, b = ((r,) if isinstance(r, torch.Tensor) else r for r in first.values())
    for u, v in zip(a, b):
        # fp32: both routes run the same GEMMs, summed in other orders; 16-bit: a few output ulps.
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(u.float(), v.float(), rtol=tol, atol=tol * max(1.0, v.abs().max().item()))
    inner = {name: calls_lasting(fn, 1e-3) for name, fn in routes.items()}
    timed = time_in_turns(routes, reps, inner)
    wall = {name: w for name, (w, _) in timed.items()}
    cpu = {name: c for name, (_, c) in timed.items()}
    med = {name: statistics.median(t) for name, t in cpu.items()}
    med_wall = {name: statistics.median(t) for name, t in wall.items()}
    return dict(op=op, dtype=str(dtype).replace("torch.", ""), direction=direction, threads=threads,
                shape="x".join(map(str, shape)), size=size, fastattn_us=med["fastattn"] * 1e6,
                torch_us=med["torch"] * 1e6, wall_us={name: t * 1e6 for name, t in med_wall.items()},
                spread_us={name: (max(t) - min(t)) * 1e6 for name, t in cpu.items()},
                calls_per_measurement=inner, torch_over_fastattn=med["torch"] / med["fastattn"],
                wall_torch_over_fastattn=med_wall["torch"] / med_wall["fastattn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--directions", default=",".join(DIRECTIONS))
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--write", action="store_true", help=f"store the table as {TABLE.path}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = itertools.product(args.ops.split(","), args.dtypes.split(","), args.directions.split(","),
                              (int(t) for t in args.threads.split(",")))
    entries = []
    print(f"ISA {cpu_attention.isa()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'op':12} {'dtype':8} {'dir':7} {'thr':>3} {'shape':>14} {'fastattn us':>12} {'torch us':>10} "
          f"{'torch/fastattn':>14}")
    for op, dtype, direction, threads in cases:
        for shape in FF_SHAPES if op == "feed_forward" else BG_SHAPES:
            e = measure(op, shape, DTYPES[dtype], direction, threads, args.reps)
            entries.append(e)
            print(f"{op:12} {dtype:8} {direction:7} {threads:>3} {e['shape']:>14} {e['fastattn_us']:>12.1f} "
                  f"{e['torch_us']:>10.1f} {e['torch_over_fastattn']:>14.2f}", flush=True)
    print("size floors (auto runs torch below them):")
    for (op, dtype, direction, threads), floor in sorted(floors(entries).items()):
        shape = next(e["shape"] for e in entries if (e["op"], e["dtype"], e["direction"], e["threads"], e["size"])
                     == (op, dtype, direction, threads, floor))
        print(f"  {op:12} {dtype:8} {direction:7} {threads} threads: {floor} ({shape})")
    record, env = run_record("bench_cpu_ffn_crossover.py", entries, sorted({e["threads"] for e in entries}),
                             isa=cpu_attention.isa())
    store(record, env, args.json, TABLE if args.write else None)


if __name__ == "__main__":
    main()
