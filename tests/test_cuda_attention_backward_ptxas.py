"""Static checks of the tensor-core attention backward (csrc/cuda/attention/inst/bwd_*.cu):
every (dtype, kernel head dim) instantiation of each of its kernels (the preprocess, dK/dV, the
deterministic dQ pass, the dq conversion) compiles with nvcc for sm_80, sm_86, sm_89 and sm_90a
with no register spills and no local-memory stack, and its shared memory (the launcher's
dynamic request, from bwd_kernel_traits.cuh) plus registers let a 128-thread block fit on each
arch. Reuses fastattn/buildcheck/ptxas.py's cached compile of every csrc/cuda source."""
from __future__ import annotations

import itertools

import pytest

from fastattn.buildcheck import kernel_report
from fastattn.buildcheck import ptxas as _ptxas
from tools import missing_tool

THREADS = 128
HEAD_DIMS = (64, 128)
BLOCK_M = BLOCK_N = 64  # bwd_kernel_traits.cuh


def dynamic_smem(kernel: str, head_dim: int) -> int:
    """AttnBwdTraits::kDkdvSmemBytes / kDqSmemBytes; the small kernels take none."""
    if kernel == "flash_bwd_dkdv_kernel":  # K, V, Q x 2, dO; dS^T; lse and delta x 2
        return (2 * BLOCK_N + 3 * BLOCK_M) * head_dim * 2 + BLOCK_N * BLOCK_M * 2 + 4 * BLOCK_M * 4
    if kernel == "flash_bwd_dq_kernel":  # Q, dO; K, V x 2
        return (2 * BLOCK_M + 4 * BLOCK_N) * head_dim * 2
    return 0


KERNELS = ("flash_bwd_preprocess_kernel", "flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel",
           "flash_bwd_convert_dq_kernel")


@pytest.fixture(scope="module")
def records():
    if _ptxas.nvcc_path() is None:
        missing_tool("nvcc not found on PATH: the CUDA sources cannot be compiled for their ptxas reports")
    recs = [r for r in _ptxas.compile_reports(_ptxas.ARCHS) if r["kernel"] in KERNELS]
    assert recs, "no backward kernels in the ptxas reports"
    return recs


def _config(r) -> tuple[str, int]:
    dtype, head_dim = (p.strip() for p in r["config"].split(","))
    return dtype, int(head_dim)


def test_every_instantiation_for_every_arch(records):
    got = {(r["kernel"], _config(r), r["arch"]) for r in records}
    want = {(k, (dt, d), a) for k, dt, d, a in itertools.product(KERNELS, ("__half", "__nv_bfloat16"), HEAD_DIMS,
                                                                  _ptxas.ARCHS)}
    assert want <= got, f"missing: {sorted(want - got)}"


@pytest.mark.parametrize("arch", _ptxas.ARCHS, ids=[f"sm_{a}" for a in _ptxas.ARCHS])
def test_no_spills_and_fits(records, arch):
    limits = kernel_report.ARCH_LIMITS[kernel_report.arch_number(arch)]
    for r in (r for r in records if r["arch"] == arch):
        _, head_dim = _config(r)
        where = f"{r['kernel']}<{r['config']}> sm_{arch}"
        assert r["spill_bytes"] == 0, f"{where} spills {r['spill_bytes']} bytes"
        assert r["stack_bytes"] == 0, f"{where} uses {r['stack_bytes']} bytes of stack"
        smem = r["static_smem"] + dynamic_smem(r["kernel"], head_dim)
        assert smem <= limits.smem_per_block, f"{where}: {smem} B of shared memory"
        assert kernel_report.theoretical_occupancy(arch, THREADS, r["registers"], smem) > 0, where
