"""Static checks of every CUDA C++ kernel: each csrc/cuda source is
compiled by nvcc for sm_80, sm_86, sm_89 and sm_90a and ptxas's ``-v`` report parsed
(fastattn/buildcheck/ptxas.py): no spills, no local-memory stack, registers and shared memory
within each arch's limits, and at least one block resident per SM."""
from __future__ import annotations

import pytest

from fastattn.buildcheck import kernel_report
from fastattn.buildcheck import ptxas as _ptxas
from tools import missing_tool

CANNED = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8fastattn4cuda1kEPf' for 'sm_80'
ptxas info    : Function properties for _ZN8fastattn4cuda1kEPf
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 128 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN8fastattn4cuda1kEPf' for 'sm_90a'
ptxas info    : Function properties for _ZN8fastattn4cuda1kEPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 352 bytes cmem[0]
"""


def test_parse_ptxas_report():
    recs = _ptxas.parse(CANNED)
    assert [(r["arch"], r["registers"], r["static_smem"], r["spill_bytes"], r["stack_bytes"]) for r in recs] == [
        ("80", 40, 128, 12, 16), ("90a", 32, 0, 0, 0)]


def test_split_demangled_name():
    name, config = _ptxas._split_name(
        "void fastattn::cuda::gated_act_fwd_kernel<__half, (fastattn::cuda::Act)2>(__half const*, long long)")
    assert (name, config) == ("gated_act_fwd_kernel", "__half, gelu_tanh")


@pytest.fixture(scope="module")
def records():
    if _ptxas.nvcc_path() is None:
        missing_tool("nvcc not found on PATH: the CUDA sources cannot be compiled for their ptxas reports")
    return _ptxas.kernel_reports(_ptxas.ARCHS)


def test_every_kernel_compiles_for_every_arch(records):
    archs = {}
    for r in records:
        archs.setdefault((r["kernel"], r["config"]), set()).add(r["arch"])
    assert archs, "no kernels found"
    for key, got in archs.items():
        assert got == set(_ptxas.ARCHS), f"{key}: compiled for {sorted(got)}"
    names = {r["kernel"] for r in records}
    for family in ("gated_act_fwd_kernel", "gated_act_bwd_kernel", "bias_gelu_fwd_kernel", "bias_gelu_bwd_kernel",
                   "scaled_masked_softmax_fwd_kernel", "scaled_masked_softmax_bwd_kernel",
                   "kvcache_append_kernel", "split_kv_decode_kernel", "split_kv_combine_kernel"):
        assert family in names, f"{family} missing from the nvcc report"


# One test per kernel directory of csrc/cuda, so a failure names the family it belongs to.
FAMILIES = sorted({p.parent.relative_to(_ptxas.CSRC / "cuda").parts[0] if p.parent != _ptxas.CSRC / "cuda" else "."
                   for p in _ptxas.sources()})


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILIES)
@pytest.mark.parametrize("arch", _ptxas.ARCHS, ids=[f"sm_{a}" for a in _ptxas.ARCHS])
def test_no_spills_and_fits(records, arch, family):
    limits = kernel_report.ARCH_LIMITS[kernel_report.arch_number(arch)]
    prefix = "cuda/" if family == "." else f"cuda/{family}/"
    mine = [r for r in records if r["arch"] == arch and r["source"].startswith(prefix)
            and (family != "." or r["source"].count("/") == 1)]
    assert mine, f"no kernels compiled from csrc/{prefix}"
    for r in mine:
        where = f"{r['kernel']}<{r['config']}> sm_{arch}"
        assert r["spill_bytes"] == 0, f"{where} spills {r['spill_bytes']} bytes"
        assert r["stack_bytes"] == 0, f"{where} uses {r['stack_bytes']} bytes of local-memory stack"
        assert r["registers"] <= limits.max_regs_per_thread
        assert r["shared_memory_bytes"] <= limits.smem_per_block, f"{where}: {r['shared_memory_bytes']} B smem"
        if r["threads_per_block"] is None:  # launch facts unknown (not in _ptxas.LAUNCH): static checks only
            continue
        assert r["registers"] * r["threads_per_block"] <= limits.registers, f"{where}: registers for one block"
        occ = kernel_report.theoretical_occupancy(arch, r["threads_per_block"], r["registers"],
                                                  r["shared_memory_bytes"])
        assert occ > 0, f"{where}: a block does not fit on an SM"
