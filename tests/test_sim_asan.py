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

import importlib.util
import os
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "csrc" / "sim" / "run_sim_tests.py"

pytestmark = pytest.mark.skipif("1" not in (os.environ.get("FASTATTN_ASAN"), os.environ.get("FASTATTN_TSAN")),
                                reason="the sanitizer jobs: set FASTATTN_ASAN=1 (or FASTATTN_TSAN=1) to run it")


def _runner():
    if "run_sim_tests" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_sim_tests", RUNNER)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["run_sim_tests"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["run_sim_tests"]


@pytest.fixture(scope="module")
def asan_build():
    runner = _runner()
    return runner, runner.build(asan=True, targets=["sim_unit_tests", *runner.planted_targets("asan")])


def test_asan_clean(asan_build):
    runner, build_dir = asan_build
    result = runner.run(build_dir / "sim_unit_tests", asan=True)
    assert "AddressSanitizer" not in result.stderr, result.stderr[-20000:]
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert "kernel_split_kv_decode" in result.stdout and "attention_fwd_fp16_noncausal" in result.stdout
    assert "0 failed" in result.stdout


@pytest.mark.parametrize("bug", [b for b in _runner().load_planted().BUGS.values() if b.build == "asan"],
                         ids=lambda b: b.name)
def test_asan_reports_planted_overrun(asan_build, bug):
    runner, build_dir = asan_build
    problem = runner.bug_problem(bug, runner.run_bug(build_dir, bug))
    assert problem is None, problem
    control = runner.run(build_dir / f"sim_planted_control_{bug.driver}", asan=True, args=bug.args)
    assert runner.control_problem(control, "asan") is None, control.stdout + control.stderr[-5000:]
