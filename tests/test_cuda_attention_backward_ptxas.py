"""Static checks of the tensor-core attention backward (csrc/cuda/attention/inst/bwd_*.cu):
every instantiation of each of its kernels (the preprocess, dK/dV, the deterministic dQ pass,
the dq conversion; per dtype and kernel head dim, and at head dim 256 per tile) compiles with
nvcc for sm_80, sm_86, sm_89 and sm_90a with no register spills and no local-memory stack, and
the tiles the launcher picks on each arch (run_flash_bwd: the wide head-dim-256 tiles where a
block's shared memory holds them) fit there: shared memory (the launcher's dynamic request,
from bwd_kernel_traits.cuh) and registers leave room for one block. Reuses
fastattn/buildcheck/ptxas.py's cached compile of every csrc/cuda source."""
from __future__ import annotations

import itertools

import pytest

from fastattn.buildcheck import kernel_report
from fastattn.buildcheck import ptxas as _ptxas
from tools import missing_tool

HEAD_DIMS = (64, 128, 256)
# bwd_kernel_traits.cuh, per kernel head dim: the (dK/dV keys a CTA, dq keys a step) tiles
# compiled, widest first (run_flash_bwd takes the first whose shared memory the device has).
TILES = {64: ((64, 64),), 128: ((64, 64),), 256: ((64, 32), (32, 16))}
DQ_BLOCK_M = 64


def dkdv_tile(head_dim: int, block_n: int) -> tuple[int, int]:
    """AttnBwdTraits<D, BN>: (threads, dynamic shared memory bytes)."""
    block_m = 64 if head_dim <= 128 else 32
    col_split = 1 if head_dim <= 128 else 2
    ds_cols = max(block_m, 64)
    # K, V, Q x 2, dO; dS^T; lse and delta x 2
    smem = (2 * block_n + 3 * block_m) * head_dim * 2 + block_n * ds_cols * 2 + 4 * block_m * 4
    return block_n // 16 * col_split * 32, smem


def dq_tile(head_dim: int, block_n: int) -> tuple[int, int]:
    """AttnBwdDqTraits<D, BN>: Q, dO; K, V x 2, 4 warps."""
    return 128, (2 * DQ_BLOCK_M + 4 * block_n) * head_dim * 2


def launched_tile(arch: str, head_dim: int) -> tuple[int, int]:
    """The tile run_flash_bwd picks on ``arch`` (its shared memory per block)."""
    limit = kernel_report.ARCH_LIMITS[kernel_report.arch_number(arch)].smem_per_block
    for bn, dq_bn in TILES[head_dim]:
        if max(dkdv_tile(head_dim, bn)[1], dq_tile(head_dim, dq_bn)[1]) <= limit:
            return bn, dq_bn
    return TILES[head_dim][-1]


KERNELS = ("flash_bwd_preprocess_kernel", "flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel",
           "flash_bwd_convert_dq_kernel")


@pytest.fixture(scope="module")
def records():
    if _ptxas.nvcc_path() is None:
        missing_tool("nvcc not found on PATH: the CUDA sources cannot be compiled for their ptxas reports")
    recs = [r for r in _ptxas.compile_reports(_ptxas.ARCHS) if r["kernel"] in KERNELS]
    assert recs, "no backward kernels in the ptxas reports"
    return recs


def _config(r) -> tuple:
    """(dtype, head dim[, key block]) from the template arguments."""
    dtype, *ints = (p.strip() for p in r["config"].split(","))
    return (dtype, *(int(i) for i in ints))


def _wanted(kernel: str, head_dim: int) -> list[tuple[int, ...]]:
    if kernel == "flash_bwd_dkdv_kernel":
        return [(head_dim, bn) for bn, _ in TILES[head_dim]]
    if kernel == "flash_bwd_dq_kernel":
        return [(head_dim, bn) for _, bn in TILES[head_dim]]
    return [(head_dim,)]


def _launch(r) -> tuple[int, int, bool]:
    """(threads, dynamic shared memory, launched on the record's arch) of a record's kernel."""
    _, head_dim, *block = _config(r)
    bn, dq_bn = launched_tile(r["arch"], head_dim)
    if r["kernel"] == "flash_bwd_dkdv_kernel":
        return (*dkdv_tile(head_dim, block[0]), block[0] == bn)
    if r["kernel"] == "flash_bwd_dq_kernel":
        return (*dq_tile(head_dim, block[0]), block[0] == dq_bn)
    return 128, 0, True


def test_every_instantiation_for_every_arch(records):
    got = {(r["kernel"], _config(r), r["arch"]) for r in records}
    want = {(k, (dt, *c), a) for k, dt, d, a in itertools.product(KERNELS, ("__half", "__nv_bfloat16"), HEAD_DIMS,
                                                                  _ptxas.ARCHS) for c in _wanted(k, d)}
    assert want <= got, f"missing: {sorted(want - got)}"


def test_head_dim_256_wide_tiles_where_they_fit():
    """sm_80 and sm_90 take the 64-key tiles, sm_86 and sm_89 (99 KB a block) the 32-key ones."""
    assert {a: launched_tile(a, 256) for a in _ptxas.ARCHS} == {"80": (64, 32), "86": (32, 16), "89": (32, 16),
                                                                "90a": (64, 32)}


@pytest.mark.parametrize("arch", _ptxas.ARCHS, ids=[f"sm_{a}" for a in _ptxas.ARCHS])
def test_no_spills_and_fits(records, arch):
    limits = kernel_report.ARCH_LIMITS[kernel_report.arch_number(arch)]
    for r in (r for r in records if r["arch"] == arch):
        where = f"{r['kernel']}<{r['config']}> sm_{arch}"
        assert r["spill_bytes"] == 0, f"{where} spills {r['spill_bytes']} bytes"
        assert r["stack_bytes"] == 0, f"{where} uses {r['stack_bytes']} bytes of stack"
        threads, dynamic, launched = _launch(r)
        if not launched:  # a wide tile on an arch whose blocks cannot hold it: never launched there
            continue
        smem = r["static_smem"] + dynamic
        assert smem <= limits.smem_per_block, f"{where}: {smem} B of shared memory"
        assert kernel_report.theoretical_occupancy(arch, threads, r["registers"], smem) > 0, where
