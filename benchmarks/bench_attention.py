"""pytest-benchmark cases for attention and KV-cache decoding, the same as ``python -m fastattn bench``.

    pytest benchmarks/bench_attention.py --benchmark-only            # small cases (GPU: the CLI's --quick)
    FASTATTN_BENCH_PRESET=quick pytest benchmarks/ --benchmark-only    # or default / full, as the CLI
    pytest benchmarks/ --benchmark-only --benchmark-autosave; ...; --benchmark-compare

Cases (:mod:`fastattn_bench.cases`) and implementations (:mod:`fastattn_bench.impls`: every
fastattn backend available on the device, never the Triton interpreter or the simulated
CUDA build, and the torch SDPA backends and other peers importable here) are the CLI's,
so both report the same work; each benchmark's ``extra_info`` holds its FLOPs/bytes and
throughput by the shared formulas of ``_common.py``. Inputs rotate between calls so that
caches do not flatter. On a CPU the default ("small") grid runs in about a minute.
"""
from __future__ import annotations

import os

import pytest

from _common import DEVICE, case_id, run_case

from fastattn_bench import cases, impls

PRESET = os.environ.get("FASTATTN_BENCH_PRESET", "small")
CASES = [c for c in cases.preset(PRESET, DEVICE.type) if c.family in ("attention", "kvcache")]
RUNNERS = [r for r in impls.runners(DEVICE, full=PRESET == "full") if set(r.families) & {"attention", "kvcache"}]


@pytest.mark.parametrize("runner", RUNNERS, ids=[r.name for r in RUNNERS])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_attention(benchmark, case, runner):
    run_case(benchmark, case, runner)
