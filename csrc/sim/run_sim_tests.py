#!/usr/bin/env python3
"""Build and run the host SIMT runtime's C++ tests (csrc/sim/tests).

    python csrc/sim/run_sim_tests.py            # runtime, primitives and kernel tests
    python csrc/sim/run_sim_tests.py --tsan     # the same under ThreadSanitizer, plus the
                                                # planted missing __syncthreads(), which
                                                # ThreadSanitizer must report

Exit status 0 when everything passed (and, with --tsan, ThreadSanitizer reported nothing
in the tests and did report the planted race). Builds incrementally in build/sim-tests
(build/sim-tests-tsan); --build-dir overrides. The pytest wrappers are
tests/test_sim_unit.py and tests/test_sim_tsan.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SIM_DIR = Path(__file__).resolve().parent
ROOT = SIM_DIR.parent.parent
TSAN_OPTIONS = "halt_on_error=0 exitcode=66 history_size=4"


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(Path(sys.executable).parent / name)
                                   if (Path(sys.executable).parent / name).exists() else None)
    if not found:
        raise RuntimeError(f"{name} not found")
    return found


def build(tsan: bool, build_dir: Path | None = None, jobs: int | None = None) -> Path:
    """Configure (once) and build sim_unit_tests (and sim_planted_race with tsan); returns the build dir."""
    build_dir = build_dir or ROOT / "build" / ("sim-tests-tsan" if tsan else "sim-tests")
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / "build.ninja").exists():
        subprocess.run([_tool("cmake"), "-S", str(SIM_DIR), "-B", str(build_dir), "-G", "Ninja",
                        f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", "-DCMAKE_BUILD_TYPE=Release",
                        f"-DFASTATTN_SIM_TSAN={'ON' if tsan else 'OFF'}"], check=True, stdout=subprocess.DEVNULL)
    targets = ["sim_unit_tests"] + (["sim_planted_race"] if tsan else [])
    cmd = [_tool("cmake"), "--build", str(build_dir), "--target", *targets]
    if jobs:
        cmd += ["-j", str(jobs)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return build_dir


def run(exe: Path, tsan: bool, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if tsan:
        env["TSAN_OPTIONS"] = TSAN_OPTIONS
    return subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tsan", action="store_true", help="build with -fsanitize=thread and check the planted race")
    ap.add_argument("--build-dir", type=Path, default=None)
    ap.add_argument("-j", "--jobs", type=int, default=None)
    args = ap.parse_args()
    build_dir = build(args.tsan, args.build_dir, args.jobs)
    ok = True
    tests = run(build_dir / "sim_unit_tests", args.tsan)
    print(tests.stdout, end="")
    if tests.returncode != 0 or "ThreadSanitizer" in tests.stderr:
        print(tests.stderr, file=sys.stderr)
        print(f"FAILED: sim_unit_tests exited with {tests.returncode}", file=sys.stderr)
        ok = False
    if args.tsan:
        race = run(build_dir / "sim_planted_race", True)
        caught = race.returncode != 0 and "data race" in race.stderr and "racy_block_sum" in race.stderr
        print(f"planted missing __syncthreads(): {'reported by ThreadSanitizer' if caught else 'NOT REPORTED'}")
        if not caught:
            print(race.stdout + race.stderr, file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
