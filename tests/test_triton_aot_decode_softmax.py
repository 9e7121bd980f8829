"""Ahead-of-time checks of the Triton softmax and split-KV decoding kernels:
every config their launchers can pick (kernels/softmax.py and
kernels/decode.py ``aot_cases()``) is compiled for sm_80 and sm_90 with no GPU (by default each
on one of the two, alternating; every one on both in the slow run); each must compile, fit the
arch's shared memory per block, and not spill registers. Compiles run in an
interpreter-free subprocess (see fastattn/buildcheck/triton_aot.py) and are cached on disk.
"""
from __future__ import annotations

import pytest

from aot_records import assert_every_record_compiled
from aot_records import name as _name

aot = pytest.importorskip("fastattn.buildcheck.triton_aot")
configs = pytest.importorskip("fastattn.kernels._configs")
decode = pytest.importorskip("fastattn.kernels.decode")
softmax = pytest.importorskip("fastattn.kernels.softmax")

ARCHS = (80, 90)
PREFIXES = ("softmax_", "decode_")


@pytest.fixture(scope="module", params=[pytest.param(True, id="stratified"),
                                        pytest.param(False, id="full", marks=pytest.mark.slow)])
def records(request):
    """The compile records of CI's stratified set (each specialisation on one arch, alternating),
    and in the slow run of the full set (every case on sm_80 and sm_90)."""
    cases = [c for c in aot.discover_cases(stratified=request.param) if c.kernel.startswith(PREFIXES)]
    assert {c.kernel for c in cases} == {"softmax_fwd", "softmax_bwd", "decode_split", "decode_direct",
                                         "decode_append", "decode_merge"}
    records = aot.kernel_reports(ARCHS, cases=cases)
    # Label each record by its case's current config: a cached record keeps the label it was
    # compiled under, and the cache key is the kernel, signature and constexprs, not the label.
    work = [(c, a) for c in cases for a in ARCHS if c.archs is None or a in c.archs]
    assert [r["kernel"] for r in records] == [c.kernel for c, _ in work]
    return [dict(r, config=dict(c.config, num_warps=c.num_warps, num_stages=c.num_stages)) for r, (c, _) in
            zip(records, work)]


def test_every_config_compiles(records):
    assert_every_record_compiled(records, ARCHS)


def test_configs_fit_shared_memory(records):
    for r in records:
        assert r["shared_memory_bytes"] <= configs.shared_memory_limit(int(r["arch"][3:])), _name(r)
        # Every config also fits sm_86/sm_89's 99 KB: the launchers do not prune per arch.
        assert r["shared_memory_bytes"] <= configs.shared_memory_limit(86), _name(r)


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
    dec = {(c.config["dtype"], c.config["BLOCK_D"], c.config["BLOCK_M"], c.config["BLOCK_N"], c.num_warps,
            c.num_stages, c.maxnreg) for c in decode.aot_cases() if c.kernel == "decode_split"}
    for dtype, elem in (("fp16", 2), ("fp32", 4)):
        for head_dim in (1, 16, 59, 64, 111, 128, 200, 256):
            bd = decode.block_d(head_dim)
            for rows in (1, 2, 8, 16, 17, 33, 64, 65, 1000):
                cfg = decode.decode_config(rows, bd, bd, elem)
                assert (dtype, bd, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"],
                        cfg["maxnreg"]) in dec, (dtype, head_dim, rows)


def test_aot_cases_cover_the_launched_specialisations():
    """Beyond the heaviest flags: the plain decode launch (no window, softcap or ALiBi) and the
    causal one (window only) at every tile, value head dims unlike the query's, the merge per output dtype,
    and the softmax forward with no mask, a bool mask without causal and a float mask with
    causal at the tiles of a short, a mid-length, the longest single-pass and a looped row."""
    cases = decode.aot_cases()
    flags = {(c.kernel, c.config["dtype"], c.config["BLOCK_D"], c.config["BLOCK_M"], c.config["WINDOW"],
              c.config["SOFTCAP"], c.config["ALIBI"]) for c in cases if c.kernel in ("decode_split", "decode_direct")}
    for dtype, elem in (("fp16", 2), ("fp32", 4)):
        for bd in (16, 32, 64, 128, 256):
            for rows in (1, 17, 33, 1000):
                bm = decode.decode_config(rows, bd, bd, elem)["BLOCK_M"]
                for kernel in ("decode_split", "decode_direct"):
                    assert (kernel, dtype, bd, bm, True, True, True) in flags, (kernel, dtype, bd, bm)
                    plain_kernel = "decode_split" if dtype == "fp32" else kernel  # fp32: split == direct
                    assert (plain_kernel, dtype, bd, bm, False, False, False) in flags, (kernel, dtype, bd, bm)
                    assert (plain_kernel, dtype, bd, bm, True, False, False) in flags, (kernel, dtype, bd, bm)
    mixed = {(c.config["BLOCK_D"], c.config["BLOCK_DV"], c.config["BLOCK_M"]) for c in cases
             if c.kernel == "decode_split" and c.config["BLOCK_D"] != c.config["BLOCK_DV"]}
    for bd, bdv in ((128, 64), (64, 128)):
        for rows in (1, 17, 33):
            assert (bd, bdv, decode.decode_config(rows, bd, bdv, 2)["BLOCK_M"]) in mixed, (bd, bdv, rows)
    assert {c.config["dtype"] for c in cases if c.kernel == "decode_merge"} == {"fp16", "fp32", "bf16"}

    soft = {(c.config["BLOCK_N"], c.config["LOOP"], c.num_warps, c.config["MASK_MODE"], c.config["CAUSAL"])
            for c in softmax.aot_cases() if c.kernel == "softmax_fwd" and c.config["dtype"] == "fp16"}
    for lk in (300, 2000, 16384, 100000):
        block, warps, loop = softmax.row_config(lk)
        for mask_mode, causal in ((0, False), (1, False), (1, True), (2, True)):
            assert (block, loop, warps, mask_mode, causal) in soft, (lk, mask_mode, causal)
        if lk >= 16384:
            assert (block, loop, warps, 2, False) in soft, lk


def test_decode_launch_uses_the_aot_config(monkeypatch):
    """kvcache_fwd launches the split kernel with decode_config's tile, warps, stages and
    register cap, the values the AOT cases compile (the interpreter ignores maxnreg, so this
    is checked on the launch arguments)."""
    import torch

    from fastattn.attention_args import AttentionArgs

    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(decode, "_decode_split_kernel", Recorder())
    args = AttentionArgs(scale=0.25, causal=True, bottom_right=True)
    for dtype, head_dim, group in ((torch.float16, 16, 1), (torch.float32, 128, 32), (torch.float32, 100, 1)):
        q = torch.randn(1, 1, 2 * group, head_dim).to(dtype)
        kc, vc = torch.randn(1, 40, 2, head_dim).to(dtype), torch.randn(1, 40, 2, head_dim).to(dtype)
        decode.kvcache_fwd(q, kc, vc, None, None, torch.tensor([30], dtype=torch.int32), args, num_splits=1)
        bd = decode.block_d(head_dim)
        cfg = decode.decode_config(group, bd, bd, q.element_size())
        got = launches[-1]
        assert {k: got[k] for k in cfg} == cfg, (dtype, head_dim, got)
        assert (got["WINDOW"], got["SOFTCAP"], got["ALIBI"], got["BLOCK_D"]) == (True, False, False, bd)
    assert launches[0]["maxnreg"] == 255 and launches[1]["maxnreg"] is None
