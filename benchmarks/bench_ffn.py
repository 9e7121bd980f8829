"""pytest-benchmark cases for the feed-forward ops, the same as ``python -m fastattn bench``.

    pytest benchmarks/bench_ffn.py --benchmark-only                    # the CLI's --quick cases
    FASTATTN_BENCH_PRESET=default pytest benchmarks/bench_ffn.py --benchmark-only

Fused gated activations (``swiglu``/``geglu``, forward and backward) are reported in GB/s
(forward moves gate, up and out: 3 tensors; backward dout, gate, up, dgate, dup: 5),
against the two-kernel torch expression ``silu(gate) * up`` and, on CUDA when importable,
Liger-Kernel's ``LigerSiLUMulFunction``. The gated MLP ``feed_forward`` is reported in
TFLOP/s (``6 tokens dim hidden`` forward, twice that backward) against three torch
matmuls with the torch activation in between.

Implementations are the harness's (:mod:`fastattn_bench.impls`): every fastattn backend
available on the device (the Triton rows only with a GPU: the interpreter is never timed;
on a CPU the native ``cpu`` kernels and ``auto``), then the peers. Inputs rotate
between calls so that caches do not flatter.
"""
from __future__ import annotations

import os

import pytest

from _common import DEVICE, case_id, run_case

from fastattn_bench import cases, impls

PRESET = os.environ.get("FASTATTN_BENCH_PRESET", "quick")
FAMILIES = ("activation", "feed_forward")
CASES = [c for c in cases.preset(PRESET, DEVICE.type) if c.family in FAMILIES]
RUNNERS = [r for r in impls.runners(DEVICE, full=PRESET == "full") if set(r.families) & set(FAMILIES)]


@pytest.mark.parametrize("runner", RUNNERS, ids=[r.name for r in RUNNERS])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_ffn(benchmark, case, runner):
    run_case(benchmark, case, runner)
