"""Sliding windows skip the key blocks they hide: the cost follows the window, not the sequence.

Keys and values far outside the window are filled with NaN. A kernel that merely masked them
would still multiply ``P = 0`` by a NaN value (``0 * NaN = NaN``) and return NaN; a kernel
that never loads those blocks returns the reference's answer. A control run without the
window shows the poison is seen when the blocks are visited. Covers the attention forward,
both backward kernels (atomic and deterministic dQ) and the split-KV decode kernel.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.attention_args import AttentionArgs
from test_triton_attention import (  # noqa: F401  (the poisoning fixture is autouse)
    BF16, DEVICE, F16, F32, _assert_close, _poison_uninitialised_memory, _qkv, _randn, _reference, kernels,
)

LQ, LK, D, LEFT = 64, 1024, 32, 40
# Rows LK-LQ .. LK-1 (bottom-right) see keys from LK - LQ - LEFT on; the largest key tile is
# 128 wide, so keys before FAR can lie in no visited tile.
FAR = LK - LQ - LEFT - 128


def _poisoned(dtype, seed=0):
    q, k, v = _qkv(1, 4, 2, LQ, LK, D, dtype, seed=seed)
    k[:, :, :FAR] = float("nan")
    v[:, :, :FAR] = float("nan")
    return q, k, v


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic-dq"])
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=["fp16", "bf16", "fp32"])
def test_keys_outside_the_window_are_never_loaded(dtype, deterministic):
    q, k, v = _poisoned(dtype)
    args = AttentionArgs(scale=1 / math.sqrt(D), causal=True, bottom_right=True, window_left=LEFT,
                         deterministic=deterministic)
    out, lse = kernels.attention_fwd(q, k, v, args)
    dout = _randn(*out.shape, dtype=dtype, seed=9)
    dq, dk, dv = kernels.attention_bwd(dout, q, k, v, out, lse, args)
    for name, t in (("out", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{name}: a hidden key block was visited (NaN read)"
    # Against the reference on the clean, visible part of the keys (bottom-right offsets kept).
    clean = slice(FAR, LK)
    q2, k2, v2 = q, k[:, :, clean], v[:, :, clean]
    kept = AttentionArgs(scale=args.scale, causal=True, bottom_right=True, window_left=LEFT)
    ref64 = _reference(q2, k2, v2, kept, dout, upcast=True)
    lowp = _reference(q2, k2, v2, kept, dout, upcast=False)
    for name, got, r64, rlp, kind in zip(("out", "lse", "dq", "dk", "dv"),
                                         (out, lse, dq, dk[:, :, clean], dv[:, :, clean]), ref64, lowp,
                                         ("out", "lse", "grad", "grad", "grad")):
        _assert_close(name, got, r64, rlp, kind, dtype)
    assert (dk[:, :, :FAR] == 0).all() and (dv[:, :, :FAR] == 0).all()


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter's max over NaN rows
def test_the_poison_is_seen_without_the_window():
    q, k, v = _poisoned(F32)
    out, _ = kernels.attention_fwd(q, k, v, AttentionArgs(scale=1 / math.sqrt(D), causal=True, bottom_right=True))
    assert torch.isnan(out).all(), "control: visited NaN blocks must show up"


@pytest.mark.parametrize("dtype", [F16, F32], ids=["fp16", "fp32"])
def test_decode_skips_cache_blocks_outside_the_window(dtype):
    """One new token against a 1000-token cache with a 50-token window."""
    lens = torch.tensor([1000, 700], dtype=torch.int32, device=DEVICE)
    q = _randn(2, 1, 4, 64, dtype=dtype, seed=1)
    k_cache = _randn(2, 1024, 2, 64, dtype=dtype, seed=2)
    v_cache = _randn(2, 1024, 2, 64, dtype=dtype, seed=3)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    for b, n in enumerate(lens.tolist()):
        k_cache[b, : n - 50 - 256] = float("nan")
        v_cache[b, : n - 50 - 256] = float("nan")
        k_cache[b, n:] = float("nan")
        v_cache[b, n:] = float("nan")
    out = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, causal=True,
                                           window_size=(50, 0), backend="triton")
    assert torch.isfinite(out).all(), "a cache block outside the window was read"
    want64, want_lowp = (reference.flash_attn_with_kvcache(q, ref_k, ref_v, cache_seqlens=lens, causal=True,
                                                           window_size=(50, 0), upcast=upcast) for upcast in (True, False))
    _assert_close("out", out, want64, want_lowp, "out", dtype)
