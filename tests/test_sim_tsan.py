"""ThreadSanitizer job (DESIGN.md section 5.4): the simulated kernels and the runtime's
tests built with -fsanitize=thread must run without a single report, and a kernel with a
deliberately missing __syncthreads() (csrc/sim/tests/planted_race.cpp, never part of the
normal run) must be reported — proof that the job catches that class of bug even when the
numbers come out right.

Slow (a separate instrumented build), so it runs only when asked:

    FASTATTN_TSAN=1 python -m pytest tests/test_sim_tsan.py

(equivalently: python csrc/sim/run_sim_tests.py --tsan).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "csrc" / "sim" / "run_sim_tests.py"

pytestmark = pytest.mark.skipif(os.environ.get("FASTATTN_TSAN") != "1",
                                reason="the ThreadSanitizer job: set FASTATTN_TSAN=1 to run it")


@pytest.fixture(scope="module")
def tsan_build():
    spec = importlib.util.spec_from_file_location("run_sim_tests", RUNNER)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner, runner.build(tsan=True)


def test_tsan_clean(tsan_build):
    runner, build_dir = tsan_build
    result = runner.run(build_dir / "sim_unit_tests", tsan=True)
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-20000:]
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert "kernel_split_kv_decode" in result.stdout and "0 failed" in result.stdout


def test_tsan_reports_planted_missing_syncthreads(tsan_build):
    runner, build_dir = tsan_build
    result = runner.run(build_dir / "sim_planted_race", tsan=True)
    assert result.returncode != 0, "ThreadSanitizer did not fail the run"
    assert "WARNING: ThreadSanitizer: data race" in result.stderr
    assert "racy_block_sum" in result.stderr and "planted_race.cpp" in result.stderr
