#!/usr/bin/env python3
"""Build and run the host SIMT runtime's C++ tests (csrc/sim/tests) and planted bugs.

    python csrc/sim/run_sim_tests.py            # runtime, primitives and kernel tests
    python csrc/sim/run_sim_tests.py --planted  # also: every planted bug of planted.py that the
                                                # simulator itself must catch fails as expected,
                                                # every rule of tests/checks/sim_checks.cpp
                                                # aborts, and the unmodified drivers pass
    python csrc/sim/run_sim_tests.py --tsan     # the tests under ThreadSanitizer, plus the
                                                # planted races, which it must report
    python csrc/sim/run_sim_tests.py --asan     # the tests under AddressSanitizer, plus the
                                                # planted out-of-bounds access

Exit status 0 when everything passed (the tests clean, every planted bug caught, for the
reason planted.py gives). Builds incrementally in build/sim-tests (build/sim-tests-tsan,
build/sim-tests-asan); --build-dir overrides. The simulator runs with its defaults (two
blocks in flight, random early landing of cp.async copies) unless FASTATTN_SIM_* say
otherwise. The pytest wrappers are tests/test_sim_unit.py, test_sim_planted.py,
test_sim_checks.py and test_sim_sanitizers.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SIM_DIR = Path(__file__).resolve().parent
ROOT = SIM_DIR.parent.parent
TSAN_OPTIONS = "halt_on_error=0 exitcode=66 history_size=4"
# Leaks are not what this build looks for (the test harness keeps its registries to exit).
ASAN_OPTIONS = "detect_leaks=0 halt_on_error=1 exitcode=67"
KINDS = ("plain", "tsan", "asan")


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(Path(sys.executable).parent / name)
                                   if (Path(sys.executable).parent / name).exists() else None)
    if not found:
        raise RuntimeError(f"{name} not found")
    return found


def load_planted():
    """csrc/sim/planted.py, the table of planted bugs."""
    name = "fastattn_sim_planted"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SIM_DIR / "planted.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _kind(tsan: bool, asan: bool) -> str:
    if tsan and asan:
        raise ValueError("ThreadSanitizer and AddressSanitizer builds are separate")
    return "tsan" if tsan else "asan" if asan else "plain"


def default_build_dir(kind: str) -> Path:
    return ROOT / "build" / {"plain": "sim-tests", "tsan": "sim-tests-tsan", "asan": "sim-tests-asan"}[kind]


def planted_targets(kind: str) -> list[str]:
    """The planted-bug executables a build of `kind` checks, and their controls."""
    planted = load_planted()
    bugs = [b for b in planted.BUGS.values() if b.build == kind]
    targets = [f"sim_planted_{b.name}" for b in bugs]
    targets += sorted({f"sim_planted_control_{b.driver}" for b in bugs})
    if kind == "plain":
        targets.append("sim_checks")
    if kind == "tsan":
        targets.append("sim_planted_race")
    return targets


def build(tsan: bool = False, build_dir: Path | None = None, jobs: int | None = None, *, asan: bool = False,
          targets: list[str] | None = None) -> Path:
    """Configure (once) and build `targets` (default: sim_unit_tests, plus sim_planted_race
    with tsan); returns the build dir."""
    kind = _kind(tsan, asan)
    build_dir = build_dir or default_build_dir(kind)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / "build.ninja").exists():
        subprocess.run([_tool("cmake"), "-S", str(SIM_DIR), "-B", str(build_dir), "-G", "Ninja",
                        f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", "-DCMAKE_BUILD_TYPE=Release",
                        f"-DPython_EXECUTABLE={sys.executable}",
                        f"-DFASTATTN_SIM_TSAN={'ON' if kind == 'tsan' else 'OFF'}",
                        f"-DFASTATTN_SIM_ASAN={'ON' if kind == 'asan' else 'OFF'}"],
                       check=True, stdout=subprocess.DEVNULL)
    if targets is None:
        targets = ["sim_unit_tests"] + (["sim_planted_race"] if kind == "tsan" else [])
    cmd = [_tool("cmake"), "--build", str(build_dir), "--target", *targets]
    if jobs:
        cmd += ["-j", str(jobs)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return build_dir


def run(exe: Path, tsan: bool = False, timeout: int = 900, *, asan: bool = False,
        args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if tsan:
        env["TSAN_OPTIONS"] = TSAN_OPTIONS
    if asan:
        env["ASAN_OPTIONS"] = ASAN_OPTIONS
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout)


def run_bug(build_dir: Path, bug, timeout: int = 300) -> subprocess.CompletedProcess:
    return run(build_dir / f"sim_planted_{bug.name}", tsan=bug.build == "tsan", asan=bug.build == "asan",
               args=bug.args, timeout=timeout)


def bug_problem(bug, result: subprocess.CompletedProcess) -> str | None:
    """Why `result` is not the failure `bug` must produce (None: it is)."""
    out = result.stdout + result.stderr
    if result.returncode == 0:
        return f"{bug.name}: ran to completion (exit 0), the bug went unnoticed:\n{out[-3000:]}"
    missing = [p for p in bug.expect if not re.search(p, out)]
    if missing:
        return f"{bug.name}: failed, but its output lacks {missing}:\n{out[-3000:]}"
    if bug.any_of and not any(re.search(p, out) for p in bug.any_of):
        return f"{bug.name}: failed, but its output matches none of {list(bug.any_of)}:\n{out[-3000:]}"
    return None


def control_problem(result: subprocess.CompletedProcess, kind: str) -> str | None:
    out = result.stdout + result.stderr
    if result.returncode != 0 or "PASS" not in result.stdout or "Sanitizer" in result.stderr:
        return f"exit {result.returncode} ({kind}):\n{out[-3000:]}"
    return None


def check_planted(kind: str, build_dir: Path) -> list[str]:
    """Runs every planted bug of `kind` and its drivers' controls; returns the problems."""
    planted = load_planted()
    problems = []
    for bug in planted.BUGS.values():
        if bug.build != kind:
            continue
        problem = bug_problem(bug, run_bug(build_dir, bug))
        print(f"planted {bug.name}: {'caught' if problem is None else 'NOT CAUGHT'}")
        if problem:
            problems.append(problem)
    for driver, arg_sets in planted.CONTROLS.items():
        if not any(b.driver == driver and b.build == kind for b in planted.BUGS.values()):
            continue
        for args in arg_sets:
            result = run(build_dir / f"sim_planted_control_{driver}", tsan=kind == "tsan", asan=kind == "asan",
                         args=args)
            problem = control_problem(result, kind)
            print(f"control {driver} {' '.join(args)}: {'pass' if problem is None else 'FAIL'}")
            if problem:
                problems.append(f"control {driver} {args}: {problem}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tsan", action="store_true", help="build with -fsanitize=thread and check the planted races")
    ap.add_argument("--asan", action="store_true", help="build with -fsanitize=address and check the planted overrun")
    ap.add_argument("--planted", action="store_true", help="(plain build) also check the planted bugs")
    ap.add_argument("--build-dir", type=Path, default=None)
    ap.add_argument("-j", "--jobs", type=int, default=None)
    args = ap.parse_args()
    kind = _kind(args.tsan, args.asan)
    with_planted = kind != "plain" or args.planted
    targets = ["sim_unit_tests"] + (planted_targets(kind) if with_planted else [])
    build_dir = build(args.tsan, args.build_dir, args.jobs, asan=args.asan, targets=targets)
    ok = True
    tests = run(build_dir / "sim_unit_tests", args.tsan, asan=args.asan)
    print(tests.stdout, end="")
    if tests.returncode != 0 or "Sanitizer" in tests.stderr:
        print(tests.stderr, file=sys.stderr)
        print(f"FAILED: sim_unit_tests exited with {tests.returncode}", file=sys.stderr)
        ok = False
    if kind == "tsan":
        race = run(build_dir / "sim_planted_race", True)
        caught = race.returncode != 0 and "data race" in race.stderr and "racy_block_sum" in race.stderr
        print(f"planted missing __syncthreads(): {'reported by ThreadSanitizer' if caught else 'NOT REPORTED'}")
        if not caught:
            print(race.stdout + race.stderr, file=sys.stderr)
            ok = False
    if with_planted:
        for problem in check_planted(kind, build_dir):
            print(problem, file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
