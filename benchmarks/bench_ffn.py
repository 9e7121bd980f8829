"""pytest-benchmark cases for the feed-forward ops, the same as ``python -m fastattn bench``.

    pytest benchmarks/bench_ffn.py --benchmark-only                    # the CLI's --quick cases
    FASTATTN_BENCH_PRESET=default pytest benchmarks/bench_ffn.py --benchmark-only

Fused gated activations (``swiglu``/``geglu``, forward and backward) are reported in GB/s
(forward moves gate, up and out: 3 tensors; backward dout, gate, up, dgate, dup: 5),
against the two-kernel torch expression ``silu(gate) * up`` and, on CUDA when importable,
Liger-Kernel's ``LigerSiLUMulFunction``. The gated MLP ``feed_forward`` is reported in
TFLOP/s (``6 tokens dim hidden`` forward, twice that backward) against three torch
matmuls with the torch activation in between.

Implementations are the CLI's (:mod:`fastattn.cli.impls`): every fastattn backend
available on the device (the Triton rows only with a GPU: the interpreter is never timed;
on a CPU the native ``cpu`` kernels and ``auto``), then the peers. Inputs rotate
between calls so that caches do not flatter.
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch

from _common import DEVICE, gbps, rotation_count, sync, tensor_bytes, tflops

from fastattn.cli import cases, impls

PRESET = os.environ.get("FASTATTN_BENCH_PRESET", "quick")
FAMILIES = ("activation", "feed_forward")
CASES = [c for c in cases.preset(PRESET, DEVICE.type) if c.family in FAMILIES]
RUNNERS = [r for r in impls.runners(DEVICE, full=PRESET == "full") if set(r.families) & set(FAMILIES)]


def _id(case) -> str:
    return case.name.replace(" ", "-").replace("/", "_")


def _input_sets(case):
    make = lambda: case.make_inputs(DEVICE, requires_grad=case.direction != "fwd")
    first = make()
    n = rotation_count(tensor_bytes(*first.values()), DEVICE)
    return [first] + [make() for _ in range(n - 1)]


def _call(runner, case, sets):
    """A no-argument callable running ``case.direction`` on the next input set each call."""
    sets = [runner.adapt(case, s) for s in sets]
    keys = impls.GRAD_KEYS[case.family]
    counter = itertools.count()

    def fn():
        s = sets[next(counter) % len(sets)]
        if case.direction == "fwd":
            with torch.no_grad():
                out = runner.forward(case, s)
        else:
            out = torch.autograd.grad(runner.forward(case, s), [s[k] for k in keys], s["dout"])
        sync()
        return out

    return fn


@pytest.mark.parametrize("runner", RUNNERS, ids=[r.name for r in RUNNERS])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_ffn(benchmark, case, runner):
    if case.family not in runner.families:
        pytest.skip(f"{runner.name} does not implement {case.family}")
    why = runner.why_not(case, DEVICE)
    if why is not None:
        pytest.skip(why)
    torch.manual_seed(0)
    sets = _input_sets(case)
    with runner.context():
        fn = _call(runner, case, sets)
        try:
            fn()  # warm-up (and autotuning); a backend that declines this input says so here
        except (ValueError, TypeError, NotImplementedError) as exc:
            pytest.skip(f"{runner.name}: {exc}".splitlines()[0])
        benchmark.group = case.name
        benchmark.pedantic(fn, rounds=5 if DEVICE.type == "cpu" else 50, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(case.as_dict())
    benchmark.extra_info.update(impl=runner.name, flops=case.flops(), bytes=case.nbytes(),
                                tflops=tflops(case.flops(), median), gbps=gbps(case.nbytes(), median))
