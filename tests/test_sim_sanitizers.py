"""The sanitizer jobs: the simulated kernels and the runtime's tests built with
-fsanitize=thread (ThreadSanitizer) and -fsanitize=address (AddressSanitizer) must run
without a single report, with two blocks in flight and cp.async copies landing at random
points (the simulator's defaults), so that races between blocks on global memory and inside
a block on shared memory, and out-of-bounds accesses, are all visible. Planted bugs must be
reported, naming their kernel:

- ThreadSanitizer: a toy reduction missing its __syncthreads() (csrc/sim/tests/planted_race.cpp)
  and the split-KV decoding kernel with the barrier before its merge removed (csrc/sim/planted.py),
  whose numbers usually come out right, which is why this job exists;
- AddressSanitizer: the scale-mask-softmax kernel loading a row's ragged tail as a whole
  16-byte vector (planted.py), which reads 12 bytes past the tensor and otherwise goes unnoticed.

The unmodified drivers must run clean. Slow (separate instrumented builds), so they run only
when asked:

    FASTATTN_TSAN=1 python -m pytest tests/test_sim_sanitizers.py   # both (CI sets it)
    FASTATTN_ASAN=1 python -m pytest tests/test_sim_sanitizers.py   # AddressSanitizer only

(equivalently: python csrc/sim/run_sim_tests.py --tsan / --asan).
"""
from __future__ import annotations

import os

import pytest

import sim_runner

_TSAN = os.environ.get("FASTATTN_TSAN") == "1"
_ASAN = _TSAN or os.environ.get("FASTATTN_ASAN") == "1"
_REPORT = {"tsan": "ThreadSanitizer", "asan": "AddressSanitizer"}
# Unit tests each build must have run (clean): the kernels with the most barriers and copies.
_MUST_PASS = {
    "tsan": ("kernel_split_kv_decode", "two_blocks_run_concurrently", "attention_fwd_fp16_noncausal",
             "attention_bwd_fp16_causal_bottom_right", "attention_bwd_bf16_noncausal_deterministic",
             "attention_bwd_fp16_hd256_wide_tiles", "attention_bwd_bf16_hd200_narrow_tiles"),
    "asan": ("kernel_split_kv_decode", "attention_fwd_fp16_noncausal"),
}
_ENABLED = {"tsan": _TSAN, "asan": _ASAN}
_WHY = {"tsan": "the ThreadSanitizer job: set FASTATTN_TSAN=1 to run it",
        "asan": "the sanitizer jobs: set FASTATTN_ASAN=1 (or FASTATTN_TSAN=1) to run it"}


def _sanitizers():
    return [pytest.param(s, marks=pytest.mark.skipif(not _ENABLED[s], reason=_WHY[s])) for s in ("tsan", "asan")]


@pytest.fixture(scope="module")
def builds():
    """``sanitizer -> (runner, build_dir)``, each built on first use."""
    made = {}

    def get(sanitizer: str):
        if sanitizer not in made:
            made[sanitizer] = sim_runner.sanitized_build(sanitizer)
        return made[sanitizer]

    return get


@pytest.mark.parametrize("sanitizer", _sanitizers())
def test_runs_clean(builds, sanitizer):
    sim_runner.assert_runs_clean(*builds(sanitizer), sanitizer, _REPORT[sanitizer], *_MUST_PASS[sanitizer])


@pytest.mark.skipif(not _TSAN, reason=_WHY["tsan"])
def test_tsan_reports_planted_missing_syncthreads(builds):
    runner, build_dir = builds("tsan")
    result = runner.run(build_dir / "sim_planted_race", tsan=True)
    assert result.returncode != 0, "ThreadSanitizer did not fail the run"
    assert "WARNING: ThreadSanitizer: data race" in result.stderr
    assert "racy_block_sum" in result.stderr and "planted_race.cpp" in result.stderr


@pytest.mark.parametrize(
    "bug", [pytest.param(b, marks=pytest.mark.skipif(not _ENABLED[b.build], reason=_WHY[b.build]))
            for b in sim_runner.load().load_planted().BUGS.values() if b.build in _REPORT],
    ids=lambda b: b.name)
def test_reports_planted_bug(builds, bug):
    sim_runner.assert_planted_bug_reported(*builds(bug.build), bug.build, bug)
