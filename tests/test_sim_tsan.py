"""ThreadSanitizer job: the simulated kernels and the runtime's
tests built with -fsanitize=thread must run without a single report, with two blocks in
flight and cp.async copies landing at random points (the simulator's defaults), so that
races between blocks on global memory and inside a block on shared memory are both
visible. Planted races must be reported, naming their kernel: a toy reduction missing its
__syncthreads() (csrc/sim/tests/planted_race.cpp) and the split-KV decoding kernel with the
barrier before its merge removed (csrc/sim/planted.py), whose numbers usually come out
right, which is why this job exists. The unmodified decoding driver must run clean.

Slow (a separate instrumented build), so it runs only when asked:

    FASTATTN_TSAN=1 python -m pytest tests/test_sim_tsan.py

(equivalently: python csrc/sim/run_sim_tests.py --tsan).
"""
from __future__ import annotations

import os

import pytest

import sim_runner

pytestmark = pytest.mark.skipif(os.environ.get("FASTATTN_TSAN") != "1",
                                reason="the ThreadSanitizer job: set FASTATTN_TSAN=1 to run it")


@pytest.fixture(scope="module")
def tsan_build():
    return sim_runner.sanitized_build("tsan")


def test_tsan_clean(tsan_build):
    sim_runner.assert_runs_clean(*tsan_build, "tsan", "ThreadSanitizer", "kernel_split_kv_decode",
                                 "two_blocks_run_concurrently", "attention_fwd_fp16_noncausal",
                                 "attention_bwd_fp16_causal_bottom_right", "attention_bwd_bf16_noncausal_deterministic")


def test_tsan_reports_planted_missing_syncthreads(tsan_build):
    runner, build_dir = tsan_build
    result = runner.run(build_dir / "sim_planted_race", tsan=True)
    assert result.returncode != 0, "ThreadSanitizer did not fail the run"
    assert "WARNING: ThreadSanitizer: data race" in result.stderr
    assert "racy_block_sum" in result.stderr and "planted_race.cpp" in result.stderr


@pytest.mark.parametrize("bug", [b for b in sim_runner.load().load_planted().BUGS.values() if b.build == "tsan"],
                         ids=lambda b: b.name)
def test_tsan_reports_planted_kernel_race(tsan_build, bug):
    sim_runner.assert_planted_bug_reported(*tsan_build, "tsan", bug)
