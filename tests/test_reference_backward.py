"""The reference's closed-form backward passes equal autograd through its forward, in float64."""
import zlib

import pytest
import torch

from fastattn import reference
from fastattn.attention_args import AttentionArgs

CASES = {
    "plain": dict(),
    "causal_top_left": dict(causal=True),
    "causal_bottom_right": dict(causal=True, bottom_right=True),
    "window": dict(window_left=3, window_right=1, bottom_right=True),
    "softcap": dict(softcap=2.0),
    "alibi": dict(alibi=True, bottom_right=True),
    "float_mask": dict(mask="float"),
    "bool_mask": dict(mask="bool"),
    "dropout": dict(dropout_p=0.3),
}


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("heads_k", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_backward_matches_autograd(case, heads_k):
    opts = dict(CASES[case])
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case}-{heads_k}".encode()))
    batch, heads, seqlen_q, seqlen_k, dim = 2, 4, 7, 9, 5
    q = _rand(gen, batch, heads, seqlen_q, dim).requires_grad_()
    k = _rand(gen, batch, heads_k, seqlen_k, dim).requires_grad_()
    v = _rand(gen, batch, heads_k, seqlen_k, dim + 2).requires_grad_()
    mask = slopes = drop = None
    kind = opts.pop("mask", None)
    if kind == "float":
        mask = _rand(gen, batch, 1, seqlen_q, seqlen_k)
    elif kind == "bool":
        mask = torch.rand(1, heads, seqlen_q, seqlen_k, generator=gen) > 0.3
    if opts.pop("alibi", False):
        slopes = torch.rand(batch, heads, generator=gen, dtype=torch.float64)
    if opts.get("dropout_p"):
        drop = torch.rand(batch, heads, seqlen_q, seqlen_k, generator=gen) > opts["dropout_p"]
    args = AttentionArgs(scale=0.4, **opts)
    out, _ = reference.attention(q, k, v, args, attn_mask=mask, alibi_slopes=slopes, dropout_mask=drop)
    dout = _rand(gen, *out.shape)
    expected = torch.autograd.grad(out, (q, k, v), dout)
    got = reference.attention_backward(dout, q.detach(), k.detach(), v.detach(), args, attn_mask=mask,
                                       alibi_slopes=slopes, dropout_mask=drop)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_varlen_attention_backward_matches_autograd():
    gen = torch.Generator().manual_seed(7)
    cu_q, cu_k = torch.tensor([0, 3, 3, 8], dtype=torch.int32), torch.tensor([0, 5, 7, 9], dtype=torch.int32)
    q = _rand(gen, 1, 4, 8, 6).requires_grad_()
    k = _rand(gen, 1, 2, 9, 6).requires_grad_()
    v = _rand(gen, 1, 2, 9, 6).requires_grad_()
    args = AttentionArgs(scale=0.5, causal=True, bottom_right=True)
    out, _ = reference.attention(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    dout = _rand(gen, *out.shape)
    expected = torch.autograd.grad(out, (q, k, v), dout)
    got = reference.attention_backward(dout, q.detach(), k.detach(), v.detach(), args, cu_seqlens_q=cu_q,
                                       cu_seqlens_k=cu_k)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"], ids=str)
def test_feed_forward_backward_matches_autograd(activation):
    gen = torch.Generator().manual_seed(11)
    x = _rand(gen, 2, 3, 6).requires_grad_()
    w_gate, w_up = _rand(gen, 10, 6).requires_grad_(), _rand(gen, 10, 6).requires_grad_()
    w_down = _rand(gen, 4, 10).requires_grad_()
    out = reference.feed_forward(x, (w_gate, w_up), w_down, activation)
    dout = _rand(gen, *out.shape)
    expected = torch.autograd.grad(out, (x, w_gate, w_up, w_down), dout)
    got = reference.feed_forward_backward(dout, x.detach(), w_gate.detach(), w_up.detach(), w_down.detach(), activation)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=str)
def test_bias_gelu_backward_matches_autograd(approximate):
    gen = torch.Generator().manual_seed(12)
    x, bias = _rand(gen, 5, 7).requires_grad_(), _rand(gen, 7)
    out = reference.bias_gelu(x, bias, approximate)
    dout = _rand(gen, *out.shape)
    (expected,) = torch.autograd.grad(out, (x,), dout)
    torch.testing.assert_close(reference.bias_gelu_backward(dout, x.detach(), bias, approximate), expected,
                               rtol=1e-10, atol=1e-12)
