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

import importlib.util
import os
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "csrc" / "sim" / "run_sim_tests.py"

pytestmark = pytest.mark.skipif(os.environ.get("FASTATTN_TSAN") != "1",
                                reason="the ThreadSanitizer job: set FASTATTN_TSAN=1 to run it")


def _runner():
    if "run_sim_tests" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_sim_tests", RUNNER)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["run_sim_tests"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["run_sim_tests"]


@pytest.fixture(scope="module")
def tsan_build():
    runner = _runner()
    return runner, runner.build(tsan=True, targets=["sim_unit_tests", *runner.planted_targets("tsan")])


def test_tsan_clean(tsan_build):
    runner, build_dir = tsan_build
    result = runner.run(build_dir / "sim_unit_tests", tsan=True)
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-20000:]
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert "kernel_split_kv_decode" in result.stdout and "0 failed" in result.stdout
    assert "two_blocks_run_concurrently" in result.stdout and "attention_fwd_fp16_noncausal" in result.stdout


def test_tsan_reports_planted_missing_syncthreads(tsan_build):
    runner, build_dir = tsan_build
    result = runner.run(build_dir / "sim_planted_race", tsan=True)
    assert result.returncode != 0, "ThreadSanitizer did not fail the run"
    assert "WARNING: ThreadSanitizer: data race" in result.stderr
    assert "racy_block_sum" in result.stderr and "planted_race.cpp" in result.stderr


@pytest.mark.parametrize("bug", [b for b in _runner().load_planted().BUGS.values() if b.build == "tsan"],
                         ids=lambda b: b.name)
def test_tsan_reports_planted_kernel_race(tsan_build, bug):
    runner, build_dir = tsan_build
    problem = runner.bug_problem(bug, runner.run_bug(build_dir, bug))
    assert problem is None, problem
    control = runner.run(build_dir / f"sim_planted_control_{bug.driver}", tsan=True, args=bug.args)
    assert runner.control_problem(control, "tsan") is None, control.stdout + control.stderr[-5000:]
