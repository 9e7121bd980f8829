"""Ahead-of-time checks of the Triton attention kernels (DESIGN.md section 5, item 2).

Every config the autotuner can keep is compiled for sm_80 and sm_90 with no GPU; each must
compile, fit the arch's shared memory per block, and not spill registers. Compiles run in
an interpreter-free subprocess (see kernels/_aot.py) and are cached on disk.
"""
from __future__ import annotations

import pytest

aot = pytest.importorskip("fastattn.kernels._aot")
attention = pytest.importorskip("fastattn.kernels.attention")

ARCHS = (80, 90)


@pytest.fixture(scope="module")
def records():
    cases = [c for c in aot.discover_cases() if c.kernel.startswith("attention_")]
    assert cases, "kernels/attention.py declares no AOT cases"
    return aot.kernel_reports(ARCHS, cases=cases)


def _name(r):
    return f"{r['kernel']} {r['arch']} {r['config']}"


def test_every_kept_config_compiles(records):
    failed = [f"{_name(r)}: {r['error']}" for r in records if r["error"]]
    assert not failed, "\n".join(failed)
    assert {r["arch"] for r in records} == {f"sm_{a}" for a in ARCHS}


def test_kept_configs_fit_shared_memory(records):
    for r in records:
        assert r["shared_memory_bytes"] <= aot.shared_memory_limit(int(r["arch"][3:])), _name(r)
        assert r["fits_shared_memory"], _name(r)


def test_kept_configs_do_not_spill(records):
    spilled = [f"{_name(r)}: {r['spill_bytes']} bytes, {r['registers']} registers" for r in records
               if r["spill_bytes"]]
    assert not spilled, "\n".join(spilled)
    for r in records:
        assert 0 < r["registers"] <= 255 and 0 < r["occupancy"] <= 1, _name(r)


def test_sm86_sm89_kept_configs_fit_their_shared_memory(records):
    """sm_86/sm_89 compile like sm_80 (same mma path) with 99 KB per block: the configs their
    pruning keeps must fit it by the sm_80 compile's measured shared memory."""
    sm80 = {(r["kernel"], tuple(sorted(r["config"].items()))): r for r in records if r["arch"] == "sm_80"}
    for c in attention.aot_cases():
        for arch in (86, 89):
            if arch in c.archs:
                cfg = dict(c.config, num_warps=c.num_warps, num_stages=c.num_stages)
                r = sm80[(c.kernel, tuple(sorted(cfg.items())))]
                assert r["shared_memory_bytes"] <= aot.shared_memory_limit(arch), f"sm_{arch}: {_name(r)}"


@pytest.mark.parametrize("arch", [80, 86, 89, 90], ids=["sm80", "sm86", "sm89", "sm90"])
def test_every_tile_and_dtype_keeps_a_config(arch):
    """The autotuner never runs out of configs where supports() accepts (so pruning never falls
    back to an unchecked tile): 16-bit inputs at every head-dim tile on every arch, with and
    without features; fp32 up to 128 on sm_80/sm_90 and up to 64 on sm_86/sm_89 (their 99 KB of
    shared memory holds no fp32 dK/dV tile at 128: supports() declines, torch serves)."""
    fp32_max = 128 if arch in (80, 90) else 64
    for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
        for bd in (16, 32, 64, 128, 256):
            for elem, features in ((2, False), (2, True), (4, False), (4, True)):
                if elem == 4 and bd > fp32_max:
                    continue
                if attention.spills_unavoidably(kernel, bd, elem, features):
                    continue  # supports() declines it (see the next test)
                kept = [c for c in attention._CANDIDATES[kernel]
                        if attention.keep_config(kernel, c, arch, bd, elem, features)]
                tried = attention.pruned_configs(kernel, arch, bd, elem, features)
                assert tried, f"{kernel} has no config for BLOCK_D={bd}, {elem}-byte elements on sm_{arch}"
                if not kept:  # the smallest tile stands in; it is one of the AOT cases checked for spills
                    assert len(tried) == 1 and (elem, features, bd) in ((2, True, 256), (4, True, 128)), \
                        f"{kernel} BLOCK_D={bd} elem={elem} features={features}: unexpected fallback"


def test_aot_cases_are_exactly_the_kept_configs():
    cases = [c for c in attention.aot_cases() if c.kernel != "attention_bwd_delta"]  # delta has no autotuning
    for c in cases:
        kernel = c.kernel.removeprefix("attention_")
        cfg = dict(BLOCK_M=c.config["BLOCK_M"], BLOCK_N=c.config["BLOCK_N"], num_warps=c.num_warps,
                   num_stages=c.num_stages, **({} if c.maxnreg is None else {"maxnreg": c.maxnreg}))
        elem = 4 if c.config["dtype"] == "fp32" else 2
        features = attention.aot_variant_has_features(c.config["variant"])
        assert c.archs == tuple(a for a in aot.ARCHS
                                if cfg in attention.pruned_configs(kernel, a, c.config["BLOCK_D"], elem, features))
        assert not attention.spills_unavoidably(kernel, c.config["BLOCK_D"], elem, features)


def test_backward_that_would_spill_is_declined(monkeypatch):
    """fp32 head dim 128 with a feature: the forward is served, the backward declined (so dispatch
    falls back for training) on a GPU; the interpreter has no registers to spill."""
    import torch
    from fastattn.ops.attention_args import AttentionArgs

    monkeypatch.setattr(attention, "INTERPRET", False)
    monkeypatch.setattr(attention, "_arch", lambda: 90)
    q = torch.empty(1, 2, 8, 128, device="meta")
    args = AttentionArgs(scale=0.1, softcap=5.0)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert attention.supports(q, q, q, args=args) is None
    assert "spills registers" in attention.supports(q, q, q, args=args, direction="bwd")
    assert attention.supports(q, q, q, args=AttentionArgs(scale=0.1), direction="bwd") is None
    assert attention.supports(q.half(), q.half(), q.half(), args=args, direction="bwd") is None


def test_occupancy_estimate_hand_values():
    # sm_80: 4 warps x 128 regs = 16384 regs per block -> 4 blocks = 16 of 64 warps.
    assert aot.occupancy(80, 128, 0, 4) == 0.25
    # sm_90: 8 warps x 255 regs (256 allocated) -> 1 block = 8 of 64 warps.
    assert aot.occupancy(90, 255, 1024, 8) == 0.125
    # sm_86: shared memory bound: 40 KB + 1 KB reserved per block -> 2 blocks of 4 warps in 100 KB = 8/48.
    assert aot.occupancy(86, 32, 40 * 1024, 4) == round(8 / 48, 4)
