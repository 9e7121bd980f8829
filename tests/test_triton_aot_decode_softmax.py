"""Ahead-of-time checks of the Triton softmax and split-KV decoding kernels (DESIGN.md
section 5, item 2): every config their launchers can pick (kernels/softmax.py and
kernels/decode.py ``aot_cases()``) is compiled for sm_80 and sm_90 with no GPU; each must
compile, fit the arch's shared memory per block, and not spill registers. Compiles run in an
interpreter-free subprocess (see kernels/_aot.py) and are cached on disk.
"""
from __future__ import annotations

import pytest

aot = pytest.importorskip("fastattn.kernels._aot")
decode = pytest.importorskip("fastattn.kernels.decode")
softmax = pytest.importorskip("fastattn.kernels.softmax")

ARCHS = (80, 90)
PREFIXES = ("softmax_", "decode_")


@pytest.fixture(scope="module")
def records():
    cases = [c for c in aot.discover_cases() if c.kernel.startswith(PREFIXES)]
    assert {c.kernel for c in cases} == {"softmax_fwd", "softmax_bwd", "decode_split", "decode_direct",
                                         "decode_append", "decode_merge"}
    return aot.kernel_reports(ARCHS, cases=cases)


def _name(r):
    return f"{r['kernel']} {r['arch']} {r['config']}"


def test_every_config_compiles(records):
    failed = [f"{_name(r)}: {r['error']}" for r in records if r["error"]]
    assert not failed, "\n".join(failed)
    assert {r["arch"] for r in records} == {f"sm_{a}" for a in ARCHS}


def test_configs_fit_shared_memory(records):
    for r in records:
        assert r["shared_memory_bytes"] <= aot.shared_memory_limit(int(r["arch"][3:])), _name(r)
        # Every config also fits sm_86/sm_89's 99 KB: the launchers do not prune per arch.
        assert r["shared_memory_bytes"] <= aot.shared_memory_limit(86), _name(r)


def test_configs_do_not_spill(records):
    spilled = [f"{_name(r)}: {r['spill_bytes']} bytes, {r['registers']} registers" for r in records
               if r["spill_bytes"]]
    assert not spilled, "\n".join(spilled)
    for r in records:
        assert 0 < r["registers"] <= 255 and 0 < r["occupancy"] <= 1, _name(r)


def test_aot_cases_cover_what_the_launchers_pick():
    """The softmax tiles of every row length up to 16k (and the looped kernel) and the decode
    tiles of every head-dim tile and row count are among the AOT cases."""
    soft = {(c.kernel, c.config["BLOCK_N"], c.config["LOOP"], c.num_warps) for c in softmax.aot_cases()
            if c.config["dtype"] == "fp16"}
    for lk in list(range(1, 70)) + [1000, 4097, 16383, 16384, 16385, 100000]:
        block, warps, loop = softmax.row_config(lk)
        for kernel in ("softmax_fwd", "softmax_bwd"):
            assert (kernel, block, loop, warps) in soft, (kernel, lk)
    dec = {(c.config["dtype"], c.config["BLOCK_D"], c.config["BLOCK_M"], c.config["BLOCK_N"], c.num_warps)
           for c in decode.aot_cases() if c.kernel == "decode_split"}
    for dtype, elem in (("fp16", 2), ("fp32", 4)):
        for head_dim in (1, 16, 59, 64, 111, 128, 200, 256):
            bd = decode.block_d(head_dim)
            for rows in (1, 2, 8, 16, 17, 33, 64, 65, 1000):
                cfg = decode.decode_config(rows, bd, bd, elem)
                assert (dtype, bd, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"]) in dec, (dtype, head_dim, rows)
