"""The interior / edge split of the Triton attention loops.

Each kernel visits a range of blocks and runs the masked branch only on edge blocks (the causal
diagonal, a window's edges, ragged rows or keys); interior blocks run with no element compare.
The block-range arithmetic is checked exhaustively against a brute-force visibility matrix
(pure Python, mirroring the kernels' formulas), and the kernels are run under the interpreter
on small shapes whose blocks are interior, diagonal and ragged at once, including Lq != Lk,
windows, GQA, varlen and a negative scale (the forward's FMA fold assumes a positive one).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from fastattn.attention_args import AttentionArgs
from test_triton_attention import (  # noqa: F401  (the poisoning fixture is autouse)
    BF16, F16, F32, INTERPRETED, _assert_close, _check_fwd_bwd, _poison_uninitialised_memory, _qkv, _randn,
    _reference, kernels,
)

FAR = 1 << 30


def _cdiv(a, b):
    return -(-a // b)


def _key_ranges(start_m, lk, off, wl, wr, bm, bn, causal, window):
    """kernels/attention.py ``_key_ranges``, in Python."""
    lo, hi, full_lo, full_hi = 0, lk, 0, (lk // bn) * bn
    if causal or window:
        hi = min(lk, start_m + bm + off + wr)
        lo = (max(0, start_m + off - wl) // bn) * bn
        full_lo = lo
        full_hi = min(full_hi, (max(0, start_m + off + wr + 1) // bn) * bn)
        if window:
            full_lo = max(lo, _cdiv(max(0, start_m + bm - 1 + off - wl), bn) * bn)
    return lo, hi, full_lo, full_hi


def _query_ranges(start_n, lq, lk, off, wl, wr, bm, bn, causal, window):
    """kernels/attention.py ``_query_ranges``, in Python."""
    lo, hi, full_lo, full_hi = 0, lq, 0, (lq // bm) * bm
    if causal or window:
        lo = (max(0, start_n - off - wr) // bm) * bm
        hi = min(lq, start_n + bn - off + wl)
        full_lo = max(lo, _cdiv(max(0, start_n + bn - 1 - off - wr), bm) * bm)
        if window:
            full_hi = min(full_hi, (max(0, start_n - off + wl + 1) // bm) * bm)
    if start_n + bn > lk:
        full_lo = full_hi = lo
    return lo, hi, full_lo, full_hi


def _visible(lq, lk, off, wl, wr):
    i = torch.arange(lq)[:, None]
    j = torch.arange(lk)[None, :]
    return (j - i <= off + wr) & (j - i >= off - wl)


def _windows():
    # (causal, window_left, window_right) as _common derives them: -1 = unbounded
    for causal, left, right in ((False, -1, -1), (True, -1, -1), (True, 5, -1), (False, 7, 0), (False, 3, 9),
                                (True, 40, -1), (False, -1, 4)):
        window = left >= 0 or (right >= 0 and not causal)
        wl = left if left >= 0 else FAR
        wr = 0 if causal else (right if right >= 0 else FAR)
        yield causal, window, wl, wr


SHAPES = [(1, 1), (17, 17), (64, 64), (70, 150), (150, 70), (113, 257), (33, 47), (128, 1), (1, 128)]
TILES = [(64, 32), (32, 64), (16, 16), (128, 64), (64, 128)]


def test_block_ranges_cover_exactly_the_visible_blocks():
    """Forward and dQ (rows own, keys visited) and dK/dV (keys own, rows visited): every visible
    (row, key) pair lies in a visited block; every interior block is wholly visible, in range and
    unragged; every visited block sees at least one key (no wasted block beyond the edges)."""
    for (lq, lk), (bm, bn), bottom_right, (causal, window, wl, wr) in itertools.product(
            SHAPES, TILES, (False, True), _windows()):
        off = lk - lq if bottom_right else 0
        vis = _visible(lq, lk, off, wl, wr)
        where = f"lq={lq} lk={lk} tile={bm}x{bn} br={bottom_right} causal={causal} window={window} wl={wl} wr={wr}"
        for start_m in range(0, lq, bm):
            lo, hi, full_lo, full_hi = _key_ranges(start_m, lk, off, wl, wr, bm, bn, causal, window)
            rows = vis[start_m:start_m + bm]
            seen = set(range(lo, hi, bn)) if hi > lo else set()
            for n0 in range(0, lk, bn):
                block = rows[:, n0:n0 + bn]
                if block.any():
                    assert n0 in seen, f"{where}: rows {start_m} miss keys {n0}"
                if full_lo <= n0 < full_hi:
                    assert n0 + bn <= lk and block.all() and block.shape[0] == min(bm, lq - start_m), where
        for start_n in range(0, lk, bn):
            lo, hi, full_lo, full_hi = _query_ranges(start_n, lq, lk, off, wl, wr, bm, bn, causal, window)
            cols = vis[:, start_n:start_n + bn]
            seen = set(range(lo, hi, bm)) if hi > lo else set()
            for m0 in range(0, lq, bm):
                block = cols[m0:m0 + bm]
                if block.any():
                    assert m0 in seen, f"{where}: keys {start_n} miss rows {m0}"
                if full_lo <= m0 < full_hi:
                    assert m0 + bm <= lq and start_n + bn <= lk and block.all(), where


def _bounds(lq, lk, args):
    """``(offset, window, window_left, window_right)`` as the launchers pass them to the range
    helpers: the bottom-right offset, whether any window applies, each side (FAR: unbounded)."""
    off = lk - lq if args.bottom_right else 0
    window = args.window_left >= 0 or (args.window_right >= 0 and not args.causal)
    wl = args.window_left if args.window_left >= 0 else FAR
    wr = 0 if args.causal else (args.window_right if args.window_right >= 0 else FAR)
    return off, window, wl, wr


def _kinds(lq, lk, args, bm, bn):
    """Which kinds of forward blocks a shape hits with a (bm x bn) tile: interior, edge."""
    off, window, wl, wr = _bounds(lq, lk, args)
    kinds = set()
    for start_m in range(0, lq, bm):
        lo, hi, full_lo, full_hi = _key_ranges(start_m, lk, off, wl, wr, bm, bn, args.causal, window)
        for n0 in range(lo, hi, bn):
            kinds.add("interior" if full_lo <= n0 < full_hi else "edge")
    return kinds


def _dkdv_kinds(lq, lk, args, bm, bn):
    """Which kinds of dK/dV blocks a shape hits with a (bm x bn) tile: interior, edge."""
    off, window, wl, wr = _bounds(lq, lk, args)
    kinds = set()
    for start_n in range(0, lk, bn):
        lo, hi, full_lo, full_hi = _query_ranges(start_n, lq, lk, off, wl, wr, bm, bn, args.causal, window)
        for m0 in range(lo, hi, bm):
            kinds.add("interior" if full_lo <= m0 < full_hi else "edge")
    return kinds


# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim, dtype, args)
RUNS = [
    (1, 4, 2, 150, 200, 32, F32, dict(causal=True, bottom_right=True)),
    (1, 2, 1, 200, 150, 40, F16, dict(causal=True)),
    (2, 2, 2, 130, 257, 64, BF16, dict()),
    (1, 3, 1, 190, 230, 16, F32, dict(causal=True, bottom_right=True, window_left=150)),
    (1, 2, 2, 200, 200, 24, F16, dict(window_left=120, window_right=100)),
    (1, 2, 1, 160, 160, 32, F32, dict(causal=True, softcap=5.0)),
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic-dq"])
@pytest.mark.parametrize("run", RUNS, ids=[f"{r[3]}x{r[4]}-{r[6]}-{'-'.join(r[7]) or 'full'}" for r in RUNS])
def test_interior_diagonal_and_ragged_blocks_together(run, deterministic):
    b, hq, hk, lq, lk, d, dtype, kw = run
    args = AttentionArgs(scale=1 / math.sqrt(d), deterministic=deterministic, **kw)
    if INTERPRETED:
        for kernel, kinds in (("fwd", _kinds), ("bwd_dq", _kinds), ("bwd_dkdv", _dkdv_kinds)):
            cfg = kernels.kernel_configs(kernel)[0]
            assert kinds(lq, lk, args, cfg["BLOCK_M"], cfg["BLOCK_N"]) == {"interior", "edge"}, kernel
    q, k, v = _qkv(b, hq, hk, lq, lk, d, dtype, seed=3)
    _check_fwd_bwd(q, k, v, args)


def test_negative_scale():
    """scale < 0: the forward flips q once so that its FMA fold may assume a positive scale."""
    q, k, v = _qkv(1, 2, 1, 100, 140, 32, F32, seed=4)
    _check_fwd_bwd(q, k, v, AttentionArgs(scale=-0.3, causal=True, bottom_right=True))
    _check_fwd_bwd(q, k, v, AttentionArgs(scale=-0.3))


def test_varlen_gqa_window_blocks():
    """Varlen sequences of unequal lengths (one shorter than a tile, one with interior blocks)."""
    lens_q, lens_k = [37, 150], [90, 200]
    cu_q = torch.tensor([0, *itertools.accumulate(lens_q)], dtype=torch.int32)
    cu_k = torch.tensor([0, *itertools.accumulate(lens_k)], dtype=torch.int32)
    q = _randn(1, 4, sum(lens_q), 32, dtype=F16, seed=7)
    k = _randn(1, 2, sum(lens_k), 32, dtype=F16, seed=8)
    v = _randn(1, 2, sum(lens_k), 32, dtype=F16, seed=9)
    args = AttentionArgs(scale=0.2, causal=True, bottom_right=True, window_left=60, max_seqlen_q=max(lens_q),
                         max_seqlen_k=max(lens_k))
    out, lse = kernels.attention_fwd(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    dout = _randn(*out.shape, dtype=F16, seed=10)
    dq, dk, dv = kernels.attention_bwd(dout, q, k, v, out, lse, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    per_seq = AttentionArgs(scale=0.2, causal=True, bottom_right=True, window_left=60)
    for s in range(2):
        rq, rk = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        sub = (q[:, :, rq], k[:, :, rk], v[:, :, rk])
        ref64 = _reference(*sub, per_seq, dout[:, :, rq], upcast=True)
        lowp = _reference(*sub, per_seq, dout[:, :, rq], upcast=False)
        got = (out[:, :, rq], lse[:, :, rq], dq[:, :, rq], dk[:, :, rk], dv[:, :, rk])
        for name, g, r64, rlp, kind in zip(("out", "lse", "dq", "dk", "dv"), got, ref64, lowp,
                                           ("out", "lse", "grad", "grad", "grad")):
            _assert_close(f"seq {s} {name}", g, r64, rlp, kind, F16)


def test_seq_bucket():
    assert kernels.seq_bucket(1, 1) == 128
    assert kernels.seq_bucket(1000, 1) == 1024 and kernels.seq_bucket(1, 1025) == 2048
    assert kernels.seq_bucket(10 ** 6, 5) == 16384
    assert "seq_bucket" in kernels._TUNE_KEY and "BOTTOM_RIGHT" in kernels._TUNE_KEY
