"""Static checks of the tensor-core attention forward (csrc/cuda/attention/inst/*.cu): every
(dtype, head dim, causal) instantiation compiles with nvcc for sm_80, sm_86, sm_89 and sm_90a
with no register spills and no local-memory stack, and its shared memory (the launcher's
dynamic request, from kernel_traits.cuh) plus registers let a 128-thread block fit on each
arch. Reuses fastattn/buildcheck/ptxas.py's cached compile of every csrc/cuda source."""
from __future__ import annotations

import itertools

import pytest

from fastattn.buildcheck import kernel_report
from fastattn.buildcheck import ptxas as _ptxas

THREADS = 128
BLOCK_M = {64: 128, 128: 128, 256: 64}  # kernel_traits.cuh
BLOCK_N = {64: 64, 128: 32, 256: 32}


def smem_bytes(head_dim: int) -> int:
    """One tile each of Q, K and V, 2-byte elements (AttnFwdTraits::kSmemBytes)."""
    return (BLOCK_M[head_dim] + 2 * BLOCK_N[head_dim]) * head_dim * 2


@pytest.fixture(scope="module")
def records():
    if _ptxas.nvcc_path() is None:
        pytest.skip("nvcc not found")
    recs = [r for r in _ptxas.compile_reports(_ptxas.ARCHS) if r["kernel"] == "flash_fwd_kernel"]
    assert recs, "no flash_fwd_kernel in the ptxas reports"
    return recs


def _config(r) -> tuple[str, int, bool]:
    dtype, head_dim, causal = (p.strip() for p in r["config"].split(","))
    return dtype, int(head_dim), causal == "true"


def test_every_instantiation_for_every_arch(records):
    got = {(_config(r), r["arch"]) for r in records}
    want = {((dt, d, c), a) for dt, d, c, a in itertools.product(("__half", "__nv_bfloat16"), BLOCK_N,
                                                                    (False, True), _ptxas.ARCHS)}
    assert want <= got, f"missing: {sorted(want - got)}"


@pytest.mark.parametrize("arch", _ptxas.ARCHS, ids=[f"sm_{a}" for a in _ptxas.ARCHS])
def test_no_spills_and_fits(records, arch):
    limits = kernel_report.ARCH_LIMITS[kernel_report.arch_number(arch)]
    for r in (r for r in records if r["arch"] == arch):
        _, head_dim, _ = _config(r)
        where = f"flash_fwd_kernel<{r['config']}> sm_{arch}"
        assert r["spill_bytes"] == 0, f"{where} spills {r['spill_bytes']} bytes"
        assert r["stack_bytes"] == 0, f"{where} uses {r['stack_bytes']} bytes of stack"
        smem = r["static_smem"] + smem_bytes(head_dim)
        assert smem <= limits.smem_per_block, f"{where}: {smem} B of shared memory"
        assert kernel_report.theoretical_occupancy(arch, THREADS, r["registers"], smem) > 0, where
