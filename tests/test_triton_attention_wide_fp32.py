"""fp32 attention at head dims above 128 (and the backward at 128 with features) in the Triton
kernels, against the float64 reference.

There every tile that holds a whole fp32 operand spills registers (tf32x3 keeps two copies of
each dot operand), so the kernels take their head-dim-chunked path
(``kernels.attention.head_dim_split``): ``Q K^T`` and ``dO V^T`` are summed over 64-column
chunks read as they are used, and the columns each program writes are split over programs (O
over two, dK/dV and dQ over four). The shapes here put interior, causal-diagonal and ragged key/query blocks in one
call (under the interpreter the forward runs 64x32 tiles, dK/dV 32x64, dQ 64x32), with head
dims that fill the 256-wide tile or leave padded columns in one or both halves; fp32 to 1e-5
relative (fastattn.testing's rule). The cases with features are slow-marked.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastattn import reference
from fastattn.attention_args import AttentionArgs, dropout_keep_mask
from attention_cases import DEVICE, assert_close, check_with_the_same_mask, dropout_args, qkv, reference_fwd_bwd

kernels = pytest.importorskip("fastattn.kernels.attention")

F32 = torch.float32


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory(poisoned):
    """NaN-filled allocations (conftest's ``poisoned``): a column or row no program writes fails."""
    yield


def _args(d, **kw):
    return AttentionArgs(scale=1.0 / math.sqrt(d), **kw)


def _check(q, k, v, args, **kw):
    """Forward and backward against the float64 reference (one fresh ``dout``)."""
    out, lse = kernels.attention_fwd(q, k, v, args, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(DEVICE)
    grads = kernels.attention_bwd(dout, q, k, v, out, lse, args, **kw)
    ref = reference_fwd_bwd(q, k, v, args, dout, upcast=True, **kw)
    # Gradients relative to the largest of the three (one can be ~0 by cancellation).
    scale = max(g[torch.isfinite(g)].abs().max().item() for g in ref[2:])
    for name, got, r64 in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), ref):
        assert_close(name, got, r64, None, dtype=F32, fp32_scale=scale if name[0] == "d" else None)


def test_head_dims_above_128_take_the_chunked_path():
    assert kernels.head_dim_split(256, 4) == (64, 128)
    assert kernels.head_dim_split(256, 4, "bwd_dkdv") == kernels.head_dim_split(256, 4, "bwd_dq") == (64, 64)
    assert kernels.head_dim_split(128, 4, "bwd_dkdv") == (128, 128)  # whole tiles up to 128
    assert kernels.head_dim_split(256, 2) == (256, 256)  # 16-bit: whole tiles at every head dim
    for d in (129, 200, 256):
        assert kernels.supports(*qkv(1, 2, 2, 8, 8, d, F32), args=_args(d)) is None
        assert kernels.supports(*qkv(1, 2, 2, 8, 8, d, F32), args=_args(d), direction="bwd") is None


# (b, hq, hk, lq, lk, d, causal, bottom_right, deterministic)
CASES = [
    (1, 2, 1, 150, 150, 256, True, False, False),  # GQA, atomic dQ: interior, diagonal and ragged blocks
    (1, 2, 2, 97, 130, 200, True, True, True),  # Lq < Lk bottom-right, deterministic dQ, padded columns
    (2, 1, 1, 70, 45, 160, False, False, False),  # not causal, Lq > Lk; the second half mostly padding
]


@pytest.mark.parametrize("case", CASES, ids=[f"q{c[3]}-k{c[4]}-d{c[5]}" for c in CASES])
def test_forward_backward_match_reference(case):
    b, hq, hk, lq, lk, d, causal, br, det = case
    q, k, v = qkv(b, hq, hk, lq, lk, d, F32, seed=d)
    _check(q, k, v, _args(d, causal=causal, bottom_right=br, deterministic=det))


def test_backward_at_128_with_features():
    """BLOCK_D = 128 with softcap and a window: whole-tile forward, chunked backward (two
    64-column slices), a padded head dim."""
    q, k, v = qkv(1, 2, 1, 90, 100, 112, F32, seed=12)
    _check(q, k, v, _args(112, bottom_right=True, window_left=50, window_right=0, softcap=5.0))


@pytest.mark.slow
def test_window_softcap_alibi_and_negative_scale():
    q, k, v = qkv(2, 4, 2, 90, 110, 192, F32, seed=5)
    slopes = (torch.rand(2, 4, generator=torch.Generator().manual_seed(0)) * 0.3).to(DEVICE)
    _check(q, k, v, _args(192, bottom_right=True, window_left=40, window_right=9, softcap=5.0), alibi_slopes=slopes)
    _check(q, k, v, AttentionArgs(scale=-0.07, causal=True, deterministic=True))


@pytest.mark.slow
def test_bool_and_additive_masks():
    q, k, v = qkv(1, 2, 2, 77, 100, 256, F32, seed=7)
    g = torch.Generator().manual_seed(4)
    keep = (torch.rand(1, 1, 77, 100, generator=g) > 0.3).to(DEVICE)  # broadcast over heads by a zero stride
    added = torch.randn(1, 2, 77, 100, generator=g).to(DEVICE)
    for mask in (keep, added):
        _check(q, k, v, _args(256, causal=True), attn_mask=mask.expand(1, 2, 77, 100))


@pytest.mark.slow
def test_varlen():
    lens_q, lens_k = [5, 70, 33], [9, 40, 66]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device=DEVICE)
    q, k, v = qkv(1, 2, 1, sum(lens_q), sum(lens_k), 160, F32, seed=8)
    args = _args(160, causal=True, bottom_right=True, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    _check(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


@pytest.mark.slow
def test_dropout_with_the_specified_mask():
    q, k, v = qkv(1, 2, 1, 80, 96, 256, F32, seed=9)
    check_with_the_same_mask("triton", q, k, v, dropout_args(256, 0.2, seed=31, causal=True))


@pytest.mark.slow
def test_mask_gradient_with_dropout():
    """The additive mask's gradient (each element written by one program: the first head-dim
    slice of its key block) with dropout and a window, against the closed-form reference."""
    q, k, v = qkv(1, 2, 1, 70, 90, 200, F32, seed=3)
    mask = torch.randn(1, 2, 70, 90, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    args = AttentionArgs(scale=1 / math.sqrt(200), bottom_right=True, window_left=30, window_right=7,
                         dropout_p=0.2, seed=99)
    out, lse = kernels.attention_fwd(q, k, v, args, attn_mask=mask)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    *grads, dmask = kernels.attention_bwd(dout, q, k, v, out, lse, args, attn_mask=mask, mask_grad=True)
    ref = reference.attention_backward(dout, q, k, v, args, attn_mask=mask, dropout_mask=dropout_keep_mask(q, k, args),
                                       upcast=True, return_mask_grad=True)
    for name, got, r64 in zip(("dq", "dk", "dv", "dmask"), (*grads, dmask), ref):
        assert_close(name, got, r64, None, dtype=F32)
