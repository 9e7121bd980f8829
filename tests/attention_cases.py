"""Shared pieces of the attention tests (the Triton, native CPU and dropout files): the float64
reference of one forward and backward, the comparison by fastattn.testing's rule, and the
dropout check of a backend's core ops against the reference run with the same keep mask."""
from __future__ import annotations

import math

import torch

from fastattn import dispatch, reference, testing
from fastattn.attention_args import AttentionArgs, dropout_keep_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_fwd_bwd(q, k, v, args, dout, upcast, **kw):
    """``(out, lse, dq, dk, dv)`` of :func:`fastattn.reference.attention` with ``args`` and the
    core op's keywords ``kw``, in float64 (``upcast``) or in ``q``'s dtype, for the one ``dout``."""
    with torch.enable_grad():
        leaves = [(t.double() if upcast else t).detach().requires_grad_() for t in (q, k, v)]
        out, lse = reference.attention(*leaves, args, **kw)
        grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return (out.detach(), lse.detach(), *grads)


def assert_close(name, got, ref64, ref_lowp, kind=None, dtype=torch.float32, fp32_scale=None):
    """``got`` against the float64 reference by fastattn.testing's rule: fp16/bf16 inputs
    (``dtype``) by flash-attn's error ratio against the reference computed in the input dtype
    (``ref_lowp``); fp32 inputs to 1e-5 relative (to ``fp32_scale`` when given, else to
    ``ref64``'s largest magnitude). ``kind`` ("out", "lse", "grad") only names what is compared:
    one rule serves every result."""
    del kind
    if dtype == torch.float32:
        testing.assert_close(got, ref64, None, name, scale=fp32_scale)
    else:
        testing.assert_close(got, ref64, ref_lowp, name)


def dropout_args(d, p, seed=1234, offset=0, **kw):
    """``AttentionArgs`` with dropout ``p`` at Philox ``(seed, offset)``, scale ``1/sqrt(d)``."""
    return AttentionArgs(scale=1.0 / math.sqrt(d), dropout_p=p, seed=seed, offset=offset, **kw)


def qkv(b, hq, hk, lq, lk, d, dtype, seed=0, device=DEVICE):
    """Fresh ``(B, H, L, D)`` inputs (``hk`` key/value heads)."""
    return (testing.randn(b, hq, lq, d, dtype=dtype, seed=seed, device=device),
            testing.randn(b, hk, lk, d, dtype=dtype, seed=seed + 1, device=device),
            testing.randn(b, hk, lk, d, dtype=dtype, seed=seed + 2, device=device))


def check_with_the_same_mask(backend, q, k, v, args, **kw):
    """The backend's forward + backward core ops vs the reference run with the specification's
    keep mask; returns ``(out, dq, dk, dv)``. ``kw``: the core ops' optional inputs."""
    core = {**dict(attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None), **kw}
    fwd = dispatch.implementations("attention_fwd")[backend]
    bwd = dispatch.implementations("attention_bwd")[backend]
    assert fwd.supports(q, k, v, args=args, **core) is None
    out, lse = fwd.fn(q, k, v, args=args, **core)
    dout = testing.randn(*out.shape, dtype=q.dtype, seed=99, device=q.device)
    dq, dk, dv = bwd.fn(dout, q, k, v, out, lse, args=args, **core)
    keep = dropout_keep_mask(q, k, args, kw.get("cu_seqlens_q"), kw.get("cu_seqlens_k"))
    assert 0 < keep.float().mean() < 1, "the mask must keep some and drop some"
    ref64 = reference_fwd_bwd(q, k, v, args, dout, upcast=True, dropout_mask=keep, **kw)
    lowp = reference_fwd_bwd(q, k, v, args, dout, upcast=False, dropout_mask=keep, **kw)
    for name, got, r64, rlp in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref64, lowp):
        assert_close(name, got, r64, rlp, dtype=q.dtype)
    return out, dq, dk, dv
