"""The host simulator's build-and-run script (csrc/sim/run_sim_tests.py) as a module, loaded
once per process, for the tests that build and run the simulated CUDA sources; and the checks
those tests share."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tools import missing_tool

SIM = Path(__file__).resolve().parent.parent / "csrc" / "sim"


def load(name: str = "run_sim_tests", path: Path | None = None) -> ModuleType:
    """The module at ``path`` (default ``csrc/sim/<name>.py``), imported once as ``name``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path or SIM / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def require_compiler() -> None:
    """Skip without a host C++ compiler; under ``CI=true`` fail instead (a missing tool there
    is a failure, not a skip)."""
    if shutil.which("g++") or shutil.which("c++"):
        return
    missing_tool("no host C++ compiler (g++ or c++) on PATH: the simulator builds the CUDA sources with it")


def sanitized_build(sanitizer: str, *extra_targets: str):
    """``(runner, build_dir)`` of the unit tests and the planted-bug drivers built with
    ``-fsanitize=<thread|address>`` (``sanitizer`` "tsan" or "asan")."""
    require_compiler()
    runner = load()
    targets = ["sim_unit_tests", *extra_targets, *runner.planted_targets(sanitizer)]
    return runner, runner.build(**{sanitizer: True}, targets=targets)


def assert_runs_clean(runner, build_dir: Path, sanitizer: str, report: str, *must_pass: str) -> None:
    """The unit tests under ``sanitizer`` run with no ``report`` (e.g. "ThreadSanitizer") on
    stderr, all pass, and include the tests named in ``must_pass``."""
    result = runner.run(build_dir / "sim_unit_tests", **{sanitizer: True})
    assert report not in result.stderr, result.stderr[-20000:]
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert "0 failed" in result.stdout, result.stdout[-5000:]
    for name in must_pass:
        assert name in result.stdout, f"{name} did not run:\n{result.stdout[-5000:]}"


def assert_planted_bug_reported(runner, build_dir: Path, sanitizer: str, bug) -> None:
    """The planted ``bug`` is reported as its entry in csrc/sim/planted.py expects, and the
    same driver without the bug runs clean."""
    problem = runner.bug_problem(bug, runner.run_bug(build_dir, bug))
    assert problem is None, problem
    control = runner.run(build_dir / f"sim_planted_control_{bug.driver}", **{sanitizer: True}, args=bug.args)
    assert runner.control_problem(control, sanitizer) is None, control.stdout + control.stderr[-5000:]
