"""AddressSanitizer job, beside the ThreadSanitizer one: the simulated
kernels and the runtime's tests built with -fsanitize=address must run without a report
(no out-of-bounds access to global memory, with two blocks in flight and random early
landing of cp.async copies), and a planted overrun must be reported naming its kernel: the
scale-mask-softmax kernel loading a row's ragged tail as a whole 16-byte vector
(csrc/sim/planted.py), which reads 12 bytes past the tensor and otherwise goes unnoticed.

Slow (a separate instrumented build), so it runs only with the sanitizer jobs:

    FASTATTN_ASAN=1 python -m pytest tests/test_sim_asan.py

(FASTATTN_TSAN=1, which CI sets, enables it too; equivalently:
python csrc/sim/run_sim_tests.py --asan).
"""
from __future__ import annotations

import os

import pytest

import sim_runner

pytestmark = pytest.mark.skipif("1" not in (os.environ.get("FASTATTN_ASAN"), os.environ.get("FASTATTN_TSAN")),
                                reason="the sanitizer jobs: set FASTATTN_ASAN=1 (or FASTATTN_TSAN=1) to run it")


@pytest.fixture(scope="module")
def asan_build():
    return sim_runner.sanitized_build("asan")


def test_asan_clean(asan_build):
    sim_runner.assert_runs_clean(*asan_build, "asan", "AddressSanitizer", "kernel_split_kv_decode",
                                 "attention_fwd_fp16_noncausal")


@pytest.mark.parametrize("bug", [b for b in sim_runner.load().load_planted().BUGS.values() if b.build == "asan"],
                         ids=lambda b: b.name)
def test_asan_reports_planted_overrun(asan_build, bug):
    sim_runner.assert_planted_bug_reported(*asan_build, "asan", bug)
