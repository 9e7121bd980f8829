"""The simulator's rules, each broken by one small kernel of
csrc/sim/tests/checks/sim_checks.cpp: warp collectives check their masks (the calling lane
must be in the mask, the lanes a mask names must pass the same mask, a shuffle must not read
a lane outside the mask or one that does not exist), ldmatrix rows and cp.async destinations
must be shared memory of the block, cp.async sources global memory aligned to the copy's
size, vector accesses aligned to their width. Each case must abort with the rule and the
kernel, block, warp and lane.
"""
from __future__ import annotations

import re

import pytest

import sim_runner

CASES = {
    "shfl_reads_outside_mask": r"__shfl_xor_sync reads lane \d+, which is not in mask 0x(0000ffff|ffff0000)",
    "shfl_caller_not_in_mask": r"__shfl_sync with mask 0x00000001, which does not include the calling lane",
    "shfl_reads_missing_lane": r"__shfl_sync reads lane 20, which has exited or does not exist",
    "shfl_masks_disagree": r"__shfl_down_sync with mask 0xffffffff, but lane 1, which that mask names, passes 0xfffffffe",
    "ballot_caller_not_in_mask": r"__ballot_sync with mask 0x000000ff, which does not include the calling lane",
    "syncwarp_caller_not_in_mask": r"__syncwarp with mask 0x0000ffff, which does not include the calling lane",
    "ldmatrix_from_global": r"ldmatrix row address 0x[0-9a-f]+ \(matrix 0\) is not shared memory of this block",
    "cp_async_to_global": r"cp\.async destination 0x[0-9a-f]+ is not shared memory of this block",
    "cp_async_from_shared": r"cp\.async source 0x[0-9a-f]+ is shared memory",
    "cp_async_misaligned_source": r"cp\.async source 0x[0-9a-f]+ is not 16-byte aligned",
    "vector_store_misaligned": r"vector store of 16 bytes at 0x[0-9a-f]+ is not 16-byte aligned",
}


@pytest.fixture(scope="module")
def checks_exe():
    sim_runner.require_compiler()
    runner = sim_runner.load()
    return runner, runner.build(targets=["sim_checks"]) / "sim_checks"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_violation_aborts_naming_kernel_and_lane(checks_exe, case):
    runner, exe = checks_exe
    result = runner.run(exe, args=(case,), timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode != 0, f"{case}: no abort:\n{out}"
    assert re.search(CASES[case], out), f"{case}: expected /{CASES[case]}/ in:\n{out}"
    # "fastattn sim: <kernel>, block (x,y,z), warp w, lane l (thread t): <rule>"
    assert re.search(rf"fastattn sim: [^\n]*\b{case}\(.*\), block \(0,0,0\), warp \d, lane \d+ \(thread \d+\): ", out), out
