"""The host SIMT runtime's C++ unit tests (csrc/sim/tests): thread/block coordinates,
__syncthreads with static and dynamic shared memory, every warp shuffle mode and width
with its edge lanes, partial warps, votes, atomics, early-returning threads, fp16/bf16
conversions against independent oracles, the csrc/cuda/common primitives, every kernel
family on small inputs, and the hardware model: cp.async copies that land only when waited
for (or early, at random), per-block poisoned static shared memory, two blocks in flight,
legal per-quad masks and __syncwarp publication. Built with CMake into build/sim-tests
(incremental); run with the simulator's defaults (two blocks at once, early landing on)."""
from __future__ import annotations

import re

import sim_runner


def test_sim_cpp_unit_tests():
    sim_runner.require_compiler()
    runner = sim_runner.load()
    build_dir = runner.build(tsan=False)
    result = runner.run(build_dir / "sim_unit_tests", tsan=False)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"^PASS (\w+)", result.stdout, re.M)
    for name in ("shuffles_all_modes_widths_edge_lanes", "shuffles_partial_warp", "votes", "atomics",
                 "syncthreads_static_shared", "syncthreads_dynamic_shared", "block_allreduce",
                 "half_rounding", "bf16_rounding", "kernel_split_kv_decode", "attention_fwd_fp16_noncausal",
                 "cp_async_lands_when_waited", "cp_async_early_landing_switch",
                 "syncwarp_publishes_cp_async_to_its_warp", "static_shared_per_block_and_poisoned",
                 "two_blocks_run_concurrently", "shuffle_quad_masks"):
        assert name in passed, f"{name} did not run:\n{result.stdout}"
