"""Gated activations on the CPU: fastattn's native kernel vs torch's own eager ops, side by side in
one process, over the sizes ``auto`` must decide between them (from one decoding token of a
small model to a training batch).

    python benchmarks/bench_cpu_activation_crossover.py [--threads 1,2] [--reps 15] [--write]
                                                        [--public] [--json PATH]

For each (activation, dtype, direction, thread count, ``tokens x hidden``) two routes are timed
call by call in turns (a change in machine load hits both alike):

* ``fastattn``: what ``auto`` runs when it keeps the native kernel: the ``cpu`` backend's
  ``gated_act_fwd`` called directly (forward, no gradient: the public function's eager route),
  or the custom op with its autograd formula and the backward (``fwd+bwd``);
* ``torch``: :func:`fastattn.backends.cpu.activation_crossover.torch_gated`, what ``auto`` runs
  instead (``act(gate) * up`` in torch's eager ops, computed in float32 and rounded once).

Both exclude what the public function does before either (argument checks, backend choice),
which the two share. Each time is the median of ``--reps`` measurements, each the mean of
enough calls to last about half a millisecond. ``--write`` stores the ratios (torch's median
over fastattn's: below ``ON_PAR``, 0.9, torch is faster by more than the noise and ``auto``
uses it at that size) as ``fastattn/backends/cpu/activation_crossover.json``, which ``auto``
reads.

``--public`` instead times what a user sees: ``fastattn.swiglu``/``geglu`` under ``auto`` (the
whole public call, after the table's decision) against ``act(gate) * up`` written in torch in
the inputs' dtype, as an unpatched model computes it.

The native activation kernels pick their instruction set when the module loads (AVX-512 where
the CPU has it, else AVX2, else SSE2; ``FASTATTN_CPU_ISA`` does not change them); the record
names the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastattn_bench.crossover import run_record, store  # noqa: E402
from fastattn_bench.measure import calls_lasting, time_in_turns  # noqa: E402

import fastattn  # noqa: E402
from fastattn.backends.cpu import activations as cpu_native  # noqa: E402
from fastattn.backends.cpu.activation_crossover import TABLE, torch_gated  # noqa: E402
from fastattn.ops import ffn as ops  # noqa: E402

ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DIRECTIONS = ("fwd", "fwd+bwd")
HIDDEN = 1408  # the MLP width of benchmarks/bench_cpu_generate.py's Llama
SHAPES = ((1, 256), *((t, HIDDEN) for t in (1, 4, 16, 64, 256, 1024, 4096)))
"""``(tokens, hidden)``: one decoding token of a narrow and of a small model's MLP up to a
training batch of 4096 tokens (5.8M elements)."""
_TORCH_ACT = {"swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def _inputs(tokens: int, hidden: int, dtype: torch.dtype, grad: bool):
    gen = torch.Generator().manual_seed(tokens * 7 + hidden)
    gate, up, dout = (torch.randn(tokens, hidden, generator=gen).to(dtype) for _ in range(3))
    return gate.requires_grad_(grad), up.requires_grad_(grad), dout


def _routes(activation: str, direction: str, gate, up, dout) -> dict:
    """The two no-argument calls of one case (see the module docstring)."""
    if direction == "fwd":
        def native():
            with torch.no_grad():
                return cpu_native.gated_act_fwd(gate, up, activation)

        def torch_route():
            with torch.no_grad():
                return torch_gated(gate, up, activation)
    else:
        def native():
            return torch.autograd.grad(ops.gated_activation(gate, up, activation, "cpu"), (gate, up), dout)

        def torch_route():
            return torch.autograd.grad(torch_gated(gate, up, activation), (gate, up), dout)
    return {"fastattn": native, "torch": torch_route}


def _public_routes(activation: str, direction: str, gate, up, dout) -> dict:
    """``--public``: the public call under ``auto`` against the unpatched model's torch code."""
    def public():
        if activation == "swiglu":
            return fastattn.swiglu(gate, up)
        return fastattn.geglu(gate, up, approximate="tanh" if activation == "geglu_tanh" else "none")

    def plain():
        return _TORCH_ACT[activation](gate) * up

    if direction == "fwd":
        def fwd(f):
            def call():
                with torch.no_grad():
                    return f()
            return call
        return {"fastattn": fwd(public), "torch": fwd(plain)}
    return {"fastattn": lambda: torch.autograd.grad(public(), (gate, up), dout),
            "torch": lambda: torch.autograd.grad(plain(), (gate, up), dout)}


def measure(activation: str, dtype: torch.dtype, direction: str, threads: int, tokens: int, hidden: int,
            reps: int, public: bool = False) -> dict:
    """One case: the two routes timed in turns; medians and the ratio torch / fastattn."""
    torch.set_num_threads(threads)
    gate, up, dout = _inputs(tokens, hidden, dtype, direction != "fwd")
    routes = (_public_routes if public else _routes)(activation, direction, gate, up, dout)
    first = {name: fn() for name, fn in routes.items()}  # the same problem, to the dtype's rounding
    a, b = (r if isinstance(r, torch.Tensor) else r[0] for r in first.values())
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # both compute in fp32; 16-bit: the output's rounding
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
    inner = {name: calls_lasting(fn, 5e-4) for name, fn in routes.items()}
    times = {name: wall for name, (wall, _) in time_in_turns(routes, reps, inner).items()}
    med = {name: statistics.median(t) for name, t in times.items()}
    return dict(activation=activation, dtype=str(dtype).replace("torch.", ""), direction=direction, threads=threads,
                tokens=tokens, hidden=hidden, elements=tokens * hidden,
                fastattn_us=med["fastattn"] * 1e6, torch_us=med["torch"] * 1e6,
                spread_us={name: (max(t) - min(t)) * 1e6 for name, t in times.items()},
                calls_per_measurement=inner, torch_over_fastattn=med["torch"] / med["fastattn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--activations", default=",".join(ACTIVATIONS))
    parser.add_argument("--directions", default=",".join(DIRECTIONS))
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--public", action="store_true", help="time the public call under auto against plain torch")
    parser.add_argument("--write", action="store_true", help=f"store the table as {TABLE.path}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.write and args.public:
        parser.error("--write stores the route comparison; --public measures something else")
    cases = itertools.product(args.activations.split(","), args.dtypes.split(","), args.directions.split(","),
                              (int(t) for t in args.threads.split(",")))
    entries = []
    print(f"{'activation':10} {'dtype':8} {'dir':7} {'thr':>3} {'tokens x hidden':>15} {'fastattn us':>12} "
          f"{'torch us':>10} {'torch/fastattn':>14}")
    for activation, dtype, direction, threads in cases:
        for tokens, hidden in SHAPES:
            e = measure(activation, DTYPES[dtype], direction, threads, tokens, hidden, args.reps, args.public)
            entries.append(e)
            print(f"{activation:10} {dtype:8} {direction:7} {threads:>3} {f'{tokens}x{hidden}':>15} "
                  f"{e['fastattn_us']:>12.2f} {e['torch_us']:>10.2f} {e['torch_over_fastattn']:>14.2f}", flush=True)
    record, env = run_record("bench_cpu_activation_crossover.py", entries, sorted({e["threads"] for e in entries}))
    store(record, env, args.json, TABLE if args.write else None)


if __name__ == "__main__":
    main()
