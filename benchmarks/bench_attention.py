"""pytest-benchmark cases for attention and KV-cache decoding, the same as ``python -m fastattn bench``.

    pytest benchmarks/bench_attention.py --benchmark-only            # small cases (GPU: the CLI's --quick)
    FASTATTN_BENCH_PRESET=quick pytest benchmarks/ --benchmark-only    # or default / full, as the CLI
    pytest benchmarks/ --benchmark-only --benchmark-autosave; ...; --benchmark-compare

Cases (:mod:`fastattn.cli.cases`) and implementations (:mod:`fastattn.cli.impls`: every
fastattn backend available on the device, never the Triton interpreter or the simulated
CUDA build, and the torch SDPA backends and other peers importable here) are the CLI's,
so both report the same work; each benchmark's ``extra_info`` holds its FLOPs/bytes and
throughput by the shared formulas of ``_common.py``. Inputs rotate between calls so that
caches do not flatter. On a CPU the default ("small") grid runs in about a minute.
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch

from _common import DEVICE, gbps, rotation_count, sync, tensor_bytes, tflops

from fastattn.cli import cases, impls

PRESET = os.environ.get("FASTATTN_BENCH_PRESET", "small")
CASES = [c for c in cases.preset(PRESET, DEVICE.type) if c.family in ("attention", "kvcache")]
RUNNERS = [r for r in impls.runners(DEVICE, full=PRESET == "full") if set(r.families) & {"attention", "kvcache"}]


def _id(case) -> str:
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


@pytest.mark.parametrize("runner", RUNNERS, ids=[r.name for r in RUNNERS])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_attention(benchmark, case, runner):
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
            fn()  # warm-up; a backend that declines this input says so here
        except (ValueError, TypeError, NotImplementedError) as exc:
            pytest.skip(f"{runner.name}: {exc}".splitlines()[0])
        benchmark.group = case.name
        benchmark.pedantic(fn, rounds=5 if DEVICE.type == "cpu" else 50, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(case.as_dict())
    benchmark.extra_info.update(impl=runner.name, flops=case.flops(), bytes=case.nbytes(),
                                tflops=tflops(case.flops(), median), gbps=gbps(case.nbytes(), median))
