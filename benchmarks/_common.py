"""Helpers of the pytest-benchmark files in this directory (``pytest benchmarks/ --benchmark-only``).

The cases, implementations, FLOP/byte formulas, timers and the environment record are the
harness's (the ``fastattn_bench`` package here, which ``python -m fastattn bench`` runs too), so
that the numbers of ``pytest benchmarks/`` and of the command are computed the same way; this
module adds what pytest-benchmark needs: the device, throughput units, a case's pytest id, and
:func:`run_case`.

Conventions (flash-attn's): causal attention counts half the score matrix; the backward
pass is 2.5x the forward's FLOPs. Times are seconds; throughput is TFLOP/s or GB/s.
"""
from __future__ import annotations

import itertools

import torch

from fastattn_bench import impls
from fastattn_bench.measure import rotation_count, tensor_bytes

# The script benchmarks (bench_cpu_ffn, bench_cpu_generate) take these from here.
from fastattn_bench.environment import environment  # noqa: F401
from fastattn_bench.measure import feed_forward_flops  # noqa: F401

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where the pytest-benchmark files run: the GPU when there is one, else the CPU."""


def tflops(flops: float, seconds: float) -> float:
    """Throughput in TFLOP/s."""
    return flops / seconds / 1e12


def gbps(nbytes: float, seconds: float) -> float:
    """Throughput in GB/s (10^9 bytes per second, as datasheets count)."""
    return nbytes / seconds / 1e9


def sync(device: torch.device = DEVICE) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so that a wall-clock timer is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def case_id(case) -> str:
    """A pytest id for a :mod:`fastattn_bench.cases` case."""
    return case.name.replace(" ", "-").replace("/", "_")


def _input_sets(case):
    first = case.make_inputs(DEVICE, requires_grad=case.direction != "fwd")
    n = rotation_count(tensor_bytes(*first.values()), DEVICE)
    return [first] + [case.make_inputs(DEVICE, requires_grad=case.direction != "fwd") for _ in range(n - 1)]


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


def run_case(benchmark, case, runner) -> None:
    """Time ``runner`` on ``case`` with pytest-benchmark (inputs rotated between calls), and
    record the case, FLOPs/bytes and throughput in ``extra_info``. Skips, saying why, when the
    runner does not implement the case or declines its inputs."""
    import pytest

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
