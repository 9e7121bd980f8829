"""Attention dropout in the native CPU attention (csrc/cpu/attention_impl.h) against the float64
reference run with the same keep mask.

The kernels draw the mask from the counter-based Philox stream that fastattn.philox specifies
and the Triton kernels use, so the mask is a function of ``(seed, offset, b, h, i, j)`` only:
the reference, given that mask, must match the forward and the gradients (fp32 to 1e-5,
fp16/bf16 by flash-attn's error-ratio rule, with tests/test_cpu_attention.py's checks and NaN
poisoning included). The mask the forward applied is also read back exactly (``v = I`` makes
``out = dropout(P)``) and compared with the specification bit for bit.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn.attention_args import AttentionArgs, dropout_keep_mask
from test_cpu_attention import (  # noqa: F401  (the poisoning fixture is autouse)
    BF16, F16, F32, ISAS, _assert_close, _core_kwargs, _poison_uninitialised_memory, _qkv, _randn, _reference,
    cpu, use_isa,
)

DTYPES, DTYPE_IDS = [F32, BF16, F16], ["fp32", "bf16", "fp16"]


def _args(d, p, seed=1234, offset=0, **kw):
    return AttentionArgs(scale=1.0 / math.sqrt(d), dropout_p=p, seed=seed, offset=offset, **kw)


def _check(q, k, v, args, **kw):
    """Native forward + backward vs the reference run with the specification's keep mask."""
    assert cpu.supports(q, k, v, args=args, **_core_kwargs(kw)) is None
    out, lse = cpu.attention_fwd(q, k, v, args=args, **_core_kwargs(kw))
    dout = _randn(*out.shape, dtype=q.dtype, seed=99)
    dq, dk, dv = cpu.attention_bwd(dout, q, k, v, out, lse, args=args, **_core_kwargs(kw))
    keep = dropout_keep_mask(q, k, args, kw.get("cu_seqlens_q"), kw.get("cu_seqlens_k"))
    assert 0 < keep.float().mean() < 1, "the mask must keep some and drop some"
    ref64 = _reference(q, k, v, args, dout, upcast=True, dropout_mask=keep, **kw)
    lowp = _reference(q, k, v, args, dout, upcast=False, dropout_mask=keep, **kw)
    for name, got, r64, rlp, kind in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref64, lowp,
                                         ("out", "lse", "grad", "grad", "grad")):
        _assert_close(name, got, r64, rlp, kind, q.dtype)
    return out


# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim, dropout_p, options)
CASES = {
    "gqa-causal-br": (1, 4, 2, 70, 150, 32, 0.3, dict(causal=True, bottom_right=True)),
    "full-tl": (2, 2, 2, 65, 33, 64, 0.1, dict()),
    "gqa-window-softcap": (1, 4, 1, 80, 80, 40, 0.5, dict(window_left=17, window_right=9, softcap=5.0,
                                                          bottom_right=True)),
    "many-key-blocks": (1, 2, 1, 130, 300, 16, 0.2, dict(causal=True)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_dropout_forward_backward_match_reference_with_the_same_mask(case, dtype):
    b, hq, hk, lq, lk, d, p, opts = CASES[case]
    q, k, v = _qkv(b, hq, hk, lq, lk, d, dtype, seed=len(case))
    _check(q, k, v, _args(d, p, **opts))


@pytest.mark.parametrize("isa", ISAS, ids=ISAS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("threads", [1, 2], ids=["t1", "t2"])
def test_dropout_every_instruction_set_and_thread_count(isa, dtype, threads, use_isa):
    use_isa(isa)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v = _qkv(2, 4, 2, 90, 140, 48, dtype, seed=7)
        _check(q, k, v, _args(48, 0.25, seed=2**63 + 12345, offset=1000, causal=True))
    finally:
        torch.set_num_threads(prev)


def test_dropout_varlen_uses_the_per_sequence_counters():
    """Varlen: sequence s draws from ``[s, :, :Lq_s, :Lk_s]`` of the (sequences, heads,
    max_seqlen_q, max_seqlen_k) counter space."""
    lens_q, lens_k = [30, 70, 5], [50, 90, 40]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    q = _randn(1, 4, sum(lens_q), 32, dtype=F32, seed=1)
    k = _randn(1, 2, sum(lens_k), 32, dtype=F32, seed=2)
    v = _randn(1, 2, sum(lens_k), 32, dtype=F32, seed=3)
    _check(q, k, v, _args(32, 0.4, causal=True, bottom_right=True), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


@pytest.mark.parametrize("isa", ISAS, ids=ISAS)
def test_dropout_mask_is_the_specification_bit_for_bit(isa, use_isa):
    """With ``v = I`` (``Lk == Dv``) the output row is ``dropout(P)``: zero exactly where the
    specification drops, and the keep rate is ``1 - p`` within a few standard deviations."""
    use_isa(isa)
    lq = lk = 64
    p = 0.35
    q = _randn(2, 3, lq, 16, dtype=F32, seed=5)
    k = _randn(2, 3, lk, 16, dtype=F32, seed=6)
    v = torch.eye(lk).expand(2, 3, lk, lk).contiguous()
    args = _args(16, p, seed=77, offset=4096)
    out, _ = cpu.attention_fwd(q, k, v, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                               args=args)
    keep = dropout_keep_mask(q, k, args)
    assert torch.equal(out != 0, keep)
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)


def test_public_api_dropout_on_cpu_is_reproducible():
    """``flash_attn_func(dropout_p=...)`` on CPU tensors runs the native kernel (no fallback)
    and draws one seed from torch's generator: the same manual seed gives the same output."""
    q, k, v = (_randn(1, 50, 2, 32, dtype=F32, seed=s) for s in (1, 2, 3))
    torch.manual_seed(3)
    a = fastattn.flash_attn_func(q, k, v, dropout_p=0.2, causal=True, backend="cpu")
    torch.manual_seed(3)
    b = fastattn.flash_attn_func(q, k, v, dropout_p=0.2, causal=True, backend="cpu")
    torch.manual_seed(4)
    c = fastattn.flash_attn_func(q, k, v, dropout_p=0.2, causal=True, backend="cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
