"""Planted bugs (csrc/sim/planted.py): deliberately broken variants of the real kernels, one
bug each (a missing or too shallow cp.async wait, a missing barrier after a wait or before a
buffer is refilled, a warp that skips writing static shared memory the merge reads, a
shuffle with a partial mask, a misaligned ldmatrix, an unchecked vector alignment), built
from a copy of csrc/ by csrc/sim/sim_sources.py into executables that never ship. Each must
fail under the simulator with its own message and the kernel's name; the same drivers built
from the real kernels must pass (so that the failure is the bug's doing). The planted bugs
only ThreadSanitizer or AddressSanitizer can see are checked in test_sim_sanitizers.py. Also:
the source rewriting those builds rely on.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parent.parent / "csrc" / "sim"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler")


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


runner = _load("run_sim_tests", SIM / "run_sim_tests.py")
planted = runner.load_planted()
sources = _load("fastattn_sim_sources", SIM / "sim_sources.py")

PLAIN_BUGS = [b for b in planted.BUGS.values() if b.build == "plain"]
CONTROLS = [(driver, args) for driver, sets in planted.CONTROLS.items() for args in sets]


@pytest.fixture(scope="module")
def build_dir():
    return runner.build(targets=runner.planted_targets("plain"))


@pytest.mark.parametrize("bug", PLAIN_BUGS, ids=lambda b: b.name)
def test_planted_bug_fails_for_its_reason(build_dir, bug):
    problem = runner.bug_problem(bug, runner.run_bug(build_dir, bug))
    assert problem is None, problem


@pytest.mark.parametrize("driver,args", CONTROLS, ids=[f"{d}-{'-'.join(a) or 'default'}" for d, a in CONTROLS])
def test_driver_passes_on_the_real_kernel(build_dir, driver, args):
    result = runner.run(build_dir / f"sim_planted_control_{driver}", args=args)
    assert runner.control_problem(result, "plain") is None, result.stdout + result.stderr[-3000:]


def test_every_bug_anchor_occurs_once_in_the_current_kernel():
    root = SIM.parent
    for bug in planted.BUGS.values():
        count = (root / bug.file).read_text().count(bug.anchor)
        assert count == 1, f"{bug.name}: anchor occurs {count} times in csrc/{bug.file}"
        assert bug.replacement.count("\n") <= bug.anchor.count("\n"), bug.name


def test_rewrite_makes_static_shared_per_block_and_keeps_lines():
    text = ("  __shared__ float a[32];\n"
            "  __align__(16) __shared__ uint16_t b[4 * 8][2];\n"
            "  __shared__ __align__(8) int c;\n"
            "  extern __shared__ __align__(16) unsigned char dyn[];\n"
            "  // __shared__ in a comment, with no declaration after it\n")
    out = sources.rewrite_shared(text)
    assert out.count("\n") == text.count("\n")
    lines = out.splitlines()
    assert "using fa_sim_t_a = float[32];" in lines[0] and "static_shared_ref<fa_sim_t_a>(&fa_sim_key_a, 16)" in lines[0]
    assert "using fa_sim_t_b = uint16_t[4*8][2];" in lines[1] and "(&fa_sim_key_b, 16)" in lines[1]
    assert "using fa_sim_t_c = int;" in lines[2] and "(&fa_sim_key_c, 8)" in lines[2]
    assert lines[3] == "  extern __shared__ __align__(16) unsigned char dyn[];"
    assert lines[4] == "  // __shared__ in a comment, with no declaration after it"


def test_stale_anchor_becomes_a_build_error():
    bug = planted.BUGS["attn_missing_wait"]
    out = sources.mutate("kernel code without the anchor\n", bug, bug.file)
    assert out.startswith("#error") and bug.name in out.splitlines()[0]
    applied = sources.mutate("a\n" + bug.anchor + "b\n", bug, bug.file)
    assert bug.anchor not in applied and applied.count("\n") == 2 + bug.anchor.count("\n")
