"""Ahead-of-time checks of the Triton attention kernels (compiled for sm_80 and sm_90, no GPU).

Every candidate tile is compiled in every specialisation of the check (by default a stratified
subset: every kernel, variant and head-dim tile at least once; the ``slow`` test compiles them
all). What the autotuner may run is decided by the compiler's report for that specialisation
(``select_compiled``: within the arch's shared memory, no spills), never by a rule of thumb, so
these tests assert that every specialisation keeps a survivor, that the tiles fast attention
kernels use (Triton's tutorial, FlashAttention-2) survive at head dims 64 and 128 in 16-bit, and
that every backward survivor is pipelined. Compiles run in an interpreter-free subprocess (see
fastattn/buildcheck/triton_aot.py) and are cached on disk.
"""
from __future__ import annotations

import pytest

from aot_records import assert_every_record_compiled
from aot_records import name as _name

aot = pytest.importorskip("fastattn.buildcheck.triton_aot")
configs = pytest.importorskip("fastattn.kernels._configs")
attention = pytest.importorskip("fastattn.kernels.attention")

ARCHS = (80, 90)


def _compile(stratified):
    cases = [c for c in aot.discover_cases(stratified=stratified) if c.kernel.startswith("attention_")]
    assert cases, "kernels/attention.py declares no AOT cases"
    return aot.kernel_reports(ARCHS, cases=cases, pruned=True)


@pytest.fixture(scope="module")
def records():
    return _compile(stratified=True)


def _check_records(records):
    assert_every_record_compiled(records, ARCHS)
    for arch in ARCHS:
        kept = attention.kept_in_reports(records, f"sm_{arch}")
        assert kept, f"sm_{arch}: no specialisation"
        for key, cfgs in kept.items():
            by_cfg = {tuple(sorted(r["config"].items())): r for r in records
                      if r["arch"] == f"sm_{arch}" and r["kernel"] == key[0]}
            for c in cfgs:
                r = by_cfg[tuple(sorted(c.items()))]
                assert r["spill_bytes"] == 0, f"{key} sm_{arch}: every candidate spills; fewest: {_name(r)}"
                assert r["fits_shared_memory"], _name(r)
                if key[0] != "attention_fwd":
                    assert c["num_stages"] >= 2, f"{key} sm_{arch}: an unpipelined backward tile {c}"
    # The fixed-tile passes (delta, row statistics) always launch: they must not spill.
    for r in records:
        if r["kernel"] in ("attention_bwd_delta", "attention_bwd_rowstats"):
            assert r["spill_bytes"] == 0 and r["fits_shared_memory"], _name(r)


def test_every_specialisation_keeps_a_compiled_tile_without_spills(records):
    """Each specialisation keeps at least one candidate by the compiler's own report, none of
    them spilling, and backward survivors all stream with num_stages >= 2."""
    _check_records(records)


@pytest.mark.slow
@pytest.mark.exhaustive  # over an hour cold on 2 cores: outside CI's slow shards
def test_every_specialisation_of_the_full_set():
    _check_records(_compile(stratified=False))


# Tiles that must survive (16-bit, causal): (kernel, head-dim tile) -> (archs, acceptable BLOCK_M x BLOCK_N).
# The dK/dV kernel also accumulates dQ (atomics) in its loop, which costs it the registers of the
# 64 x 64 and 32/64 x 128 tiles: its 32-row tiles survive at head dim 64, 16-row ones at 128.
ANCHORS = {
    ("attention_fwd", 64): ((80, 90), {(128, 64), (128, 128), (64, 64)}),
    ("attention_fwd", 128): ((80, 90), {(128, 64), (128, 128)}),
    ("attention_bwd_dkdv", 64): ((80, 90), {(32, 64), (64, 64), (32, 128), (64, 128)}),
    ("attention_bwd_dq", 64): ((80, 90), {(64, 64), (128, 32), (128, 64)}),
    ("attention_bwd_dq", 128): ((90,), {(64, 64), (128, 32), (128, 64)}),
    # The Hopper dK/dV kernel (TMA, transposed tiles) keeps a 128-key tile with atomic dQ.
    ("attention_bwd_dkdv_tma", 64): ((90,), {(64, 128), (32, 128)}),
}


@pytest.mark.parametrize("arch", ARCHS, ids=[f"sm{a}" for a in ARCHS])
def test_the_proven_tiles_survive_at_head_dims_64_and_128(records, arch):
    kept = attention.kept_in_reports(records, f"sm_{arch}")
    for (kernel, bd), (archs, tiles) in ANCHORS.items():
        key = (kernel, "causal", "fp16", bd)
        if arch not in archs or key not in kept:
            continue
        got = {(c["BLOCK_M"], c["BLOCK_N"]) for c in kept[key]}
        assert got & tiles, f"{kernel} hd{bd} sm_{arch}: kept {sorted(got)}, none of {sorted(tiles)}"


def test_sm86_sm89_keep_a_tile_within_their_shared_memory(records):
    """sm_86/sm_89 compile like sm_80 (same mma path) with 99 KB per block: by the sm_80 compile's
    shared memory, every 16-bit specialisation still keeps a tile there."""
    kept = attention.kept_in_reports(records, "sm_80", smem_limit=configs.shared_memory_limit(86))
    for key, cfgs in kept.items():
        if key[2] != "fp16":
            continue
        by_cfg = {tuple(sorted(r["config"].items())): r for r in records if r["arch"] == "sm_80" and r["kernel"] == key[0]}
        assert any(by_cfg[tuple(sorted(c.items()))]["shared_memory_bytes"] <= configs.shared_memory_limit(86)
                   for c in cfgs), f"{key}: no tile fits sm_86"


def test_stratified_subset_covers_every_kernel_variant_and_tile():
    cases = attention.aot_cases(stratified=True)
    got = {(c.kernel, c.config.get("variant")) for c in cases}
    for variant in attention._AOT_VARIANTS:
        for kernel in ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"):
            assert (kernel, variant) in got, (kernel, variant)
    tiles = {c.config["BLOCK_D"] for c in cases if c.kernel == "attention_fwd"}
    assert tiles == set(attention._AOT_BLOCK_D)
    full = attention.aot_cases()
    assert len(cases) < len(full)
    assert {(c.kernel, tuple(sorted(c.config.items())), c.num_warps, c.num_stages) for c in cases} <= {
        (c.kernel, tuple(sorted(c.config.items())), c.num_warps, c.num_stages) for c in full}


def test_select_compiled_keeps_what_the_compiler_accepts():
    sel = configs.select_compiled
    a, b, c = "a", "b", "c"
    # (shared bytes, spill bytes) per config
    assert sel([a, b, c], [(1000, 0), (5000, 0), (900, 16)], 4096) == [a]
    assert sel([a, b, c], [(1000, 8), (5000, 0), (900, 16)], 4096) == [a]  # all that fit spill: the fewest
    assert sel([a, b], [None, (1000, 4)], 4096) == [a]  # no report: kept, the launch decides
    assert sel([a, b], [(9000, 0), (8000, 0)], 4096) == [a, b]  # nothing fits: the launch raises


def test_fp32_backward_with_features_at_128_runs_chunked_and_is_served(monkeypatch):
    """fp32 head dim 128 with a feature: every whole-tile backward candidate spills there, so the
    backward takes the head-dim-chunked path (whose 16-row tiles do not spill: the fp32 "features",
    "dropout" and "varlen" cases at 128) and the call is served on a GPU; without features, and in
    the forward, whole tiles."""
    import torch
    from fastattn.attention_args import AttentionArgs

    monkeypatch.setattr(attention, "INTERPRET", False)
    monkeypatch.setattr(attention, "_arch", lambda: 90)
    q = torch.empty(1, 2, 8, 128, device="meta")
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    for args in (AttentionArgs(scale=0.1, softcap=5.0), AttentionArgs(scale=0.1)):
        assert attention.supports(q, q, q, args=args) is None
        assert attention.supports(q, q, q, args=args, direction="bwd") is None
    assert attention.head_dim_split(128, 4, "bwd_dkdv", features=True) == (64, 64)
    assert attention.head_dim_split(128, 4, "bwd_dq", features=False) == (128, 128)
    assert attention.head_dim_split(128, 4, "fwd", features=True) == (128, 128)
    assert attention.head_dim_split(128, 2, "bwd_dkdv", features=True) == (128, 128)


def test_occupancy_estimate_hand_values():
    # sm_80: 4 warps x 128 regs = 16384 regs per block -> 4 blocks = 16 of 64 warps.
    assert aot.occupancy(80, 128, 0, 4) == 0.25
    # sm_90: 8 warps x 255 regs (256 allocated) -> 1 block = 8 of 64 warps.
    assert aot.occupancy(90, 255, 1024, 8) == 0.125
    # sm_86: shared memory bound: 40 KB + 1 KB reserved per block -> 2 blocks of 4 warps in 100 KB = 8/48.
    assert aot.occupancy(86, 32, 40 * 1024, 4) == round(8 / 48, 4)
