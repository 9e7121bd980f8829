"""The gradient of a float ``attn_mask`` that requires grad, computed by the Triton backward
(``attention_bwd_mask_grad``), against autograd through the float64 reference.

The mask enters the scores after the scale and the softcap, so its gradient is the softmax
gradient ``dS`` itself, broadcast back (summed) to the mask's own shape as torch does.
fp32 to 1e-5 relative; fp16/bf16 by flash-attn's error-ratio rule against the reference run
in the input dtype (helpers and NaN poisoning from tests/test_triton_attention.py). Runs on
CUDA tensors with a GPU, else under the Triton interpreter.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.attention_args import AttentionArgs, dropout_keep_mask
from test_triton_attention import (  # noqa: F401  (the poisoning fixture is autouse)
    BF16, DEVICE, F16, F32, _assert_close, _poison_uninitialised_memory, _qkv, _randn, kernels,
)

DTYPES, DTYPE_IDS = [F16, BF16, F32], ["fp16", "bf16", "fp32"]
MASK_SHAPES = {"padding-B11S": (2, 1, 1, 70), "shared-11LS": (1, 1, 50, 70), "full-BHLS": (2, 4, 50, 70),
               "2d-LS": (50, 70)}


def _sdpa_grads(fn, q, k, v, mask, dout, cast=None):
    leaves = [(t.to(cast) if cast else t).detach().clone().requires_grad_() for t in (q, k, v, mask)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return (out.detach(), *grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", list(MASK_SHAPES), ids=list(MASK_SHAPES))
def test_sdpa_float_mask_gradient(shape, dtype):
    q, k, v = _qkv(2, 4, 2, 50, 70, 32, dtype, seed=len(shape))
    mask = _randn(*MASK_SHAPES[shape], dtype=dtype, seed=7)
    mask[..., -5:] = float("-inf")  # hidden keys: gradient 0 there, as torch gives
    dout = _randn(2, 4, 50, 32, dtype=dtype, seed=8)

    def ours(q_, k_, v_, m_):
        return fastattn.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_, enable_gqa=True, backend="triton")

    def ref(q_, k_, v_, m_):
        return reference.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_, enable_gqa=True)

    got = _sdpa_grads(ours, q, k, v, mask, dout)
    ref64 = _sdpa_grads(ref, q, k, v, mask, dout, cast=torch.float64)
    lowp = _sdpa_grads(ref, q, k, v, mask, dout)
    assert got[4].shape == mask.shape and got[4].dtype == dtype
    for name, g, r64, rlp, kind in zip(("out", "dq", "dk", "dv", "dmask"), got, ref64, lowp,
                                       ("out", "grad", "grad", "grad", "grad")):
        _assert_close(name, g, r64, rlp, kind, dtype)
    assert (got[4][..., -5:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernel_mask_gradient_with_window_softcap_gqa_dropout(dtype):
    """Every feature that shapes dS at once; the closed-form reference is itself checked
    against autograd through the reference forward."""
    q, k, v = _qkv(1, 4, 1, 70, 90, 40, dtype, seed=3)
    mask = _randn(1, 4, 70, 90, dtype=dtype, seed=4)
    args = AttentionArgs(scale=1 / math.sqrt(40), bottom_right=True, window_left=20, window_right=7, softcap=6.0,
                         dropout_p=0.2, seed=99)
    out, lse = kernels.attention_fwd(q, k, v, args, attn_mask=mask)
    dout = _randn(*out.shape, dtype=dtype, seed=5)
    dq, dk, dv, dmask = kernels.attention_bwd(dout, q, k, v, out, lse, args, attn_mask=mask, mask_grad=True)
    keep = dropout_keep_mask(q, k, args)

    def closed_form(upcast):
        return reference.attention_backward(dout, q, k, v, args, attn_mask=mask, dropout_mask=keep, upcast=upcast,
                                            return_mask_grad=True)

    ref64, lowp = closed_form(True), closed_form(False)
    leaves = [t.double().requires_grad_() for t in (q, k, v, mask)]
    auto = torch.autograd.grad(reference.attention(*leaves[:3], args, attn_mask=leaves[3], dropout_mask=keep)[0],
                               leaves, dout.double())
    for a, b in zip(auto, ref64):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for name, g, r64, rlp in zip(("dq", "dk", "dv", "dmask"), (dq, dk, dv, dmask), ref64, lowp):
        _assert_close(name, g, r64, rlp, "grad", dtype)
    outside = torch.ones(70, 90, dtype=torch.bool, device=DEVICE)
    outside &= ~reference.visibility_mask(70, 90, args, DEVICE)
    assert (dmask[..., outside] == 0).all(), "keys outside the window get no gradient (never written: zeros)"


def test_auto_on_cpu_and_explicit_backends_without_mask_gradient():
    """Backends without ``attention_bwd_mask_grad`` are skipped by auto (torch's SDPA then
    serves the call on CPU) and named in the error of an explicit request."""
    q, k, v = _qkv(1, 2, 2, 8, 8, 16, F32, seed=1)
    mask = _randn(1, 1, 8, 8, dtype=F32, seed=2).requires_grad_()
    if DEVICE == "cpu":
        out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
        assert mask.grad is not None and mask.grad.shape == mask.shape
        with pytest.raises(ValueError, match="attention_bwd_mask_grad"):
            fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="cpu")


def test_opcheck_mask_grad_op():
    """The custom op's schema, fake implementation and autograd registration agree (opcheck)."""
    q, k, v = _qkv(1, 2, 1, 20, 24, 16, F32, seed=6)
    mask = _randn(1, 2, 20, 24, dtype=F32, seed=7)
    options = (0.25, False, False, -1, -1, 0.0, 0.0, 0, 0, 20, 24, False, 0, "triton")
    out, lse = torch.ops.fastattn.attention_fwd(q, k, v, mask, None, None, None, *options)
    dout = _randn(*out.shape, dtype=F32, seed=8)
    torch.library.opcheck(torch.ops.fastattn.attention_bwd_mask_grad.default,
                          (dout, q, k, v, out, lse, mask, None, None, None, *options))
    leaves = [t.clone().requires_grad_() for t in (q, k, v, mask)]
    torch.library.opcheck(torch.ops.fastattn.attention_fwd.default, (*leaves, None, None, None, *options))
