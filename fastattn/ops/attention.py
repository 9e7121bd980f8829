"""The attention family's one core op: ``fastattn::attention_fwd`` / ``attention_bwd``.

Every public attention function (SDPA layout, flash layout, varlen) is a thin
view in front of :func:`attention`, which takes ``(B, H, L, D)`` tensors by
strides plus optional ``cu_seqlens``. The op is a ``torch.library.custom_op``
with a fake implementation (so ``torch.compile`` traces through it) and an
autograd formula that calls the backward op of the same backend.
"""
from __future__ import annotations

from dataclasses import astuple, fields
from typing import Optional

import torch
from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.ops.sink import apply_sink, sink_grad
from fastattn.attention_args import (AttentionArgs, empty_like_layout, empty_like_strides, layout_strides,
                                         with_strides)

_ARG_NAMES = [f.name for f in fields(AttentionArgs)]


def _args(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, seed, offset,
          max_seqlen_q, max_seqlen_k, deterministic, num_splits) -> AttentionArgs:
    return AttentionArgs(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p,
                         seed, offset, max_seqlen_q, max_seqlen_k, deterministic, num_splits)


@torch.library.custom_op("fastattn::attention_fwd", mutates_args=())
def _attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
    scale: float, causal: bool, bottom_right: bool, window_left: int, window_right: int,
    softcap: float, dropout_p: float, seed: int, offset: int, max_seqlen_q: int, max_seqlen_k: int,
    deterministic: bool, num_splits: int, backend: str, learnable_sink: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    if cu_seqlens_q is not None and check.reads_values_now(cu_seqlens_q):
        check.cu_seqlens_values("cu_seqlens_q", cu_seqlens_q, q.shape[2], max_seqlen_q, "max_seqlen_q")
        check.cu_seqlens_values("cu_seqlens_k", cu_seqlens_k, k.shape[2], max_seqlen_k, "max_seqlen_k")
    args = _args(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, seed, offset,
                 max_seqlen_q, max_seqlen_k, deterministic, num_splits)
    impl = dispatch.implementation("attention_fwd", backend)
    out, lse = impl.fn(q, k, v, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                       cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, args=args)
    if learnable_sink is not None:  # exact for every backend (fastattn.ops.sink)
        out, lse = apply_sink(out, lse, learnable_sink)
    return with_strides(out, layout_strides(q, v.shape[-1])), with_strides(lse, _dense_strides(lse))


@_attention_fwd.register_fake
def _(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, *rest):
    out = empty_like_layout(q, v.shape[-1])
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.custom_op("fastattn::attention_bwd", mutates_args=())
def _attention_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
    scale: float, causal: bool, bottom_right: bool, window_left: int, window_right: int,
    softcap: float, dropout_p: float, seed: int, offset: int, max_seqlen_q: int, max_seqlen_k: int,
    deterministic: bool, num_splits: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    args = _args(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, seed, offset,
                 max_seqlen_q, max_seqlen_k, deterministic, num_splits)
    impl = dispatch.implementation("attention_bwd", backend)
    grads = impl.fn(dout, q, k, v, out, lse, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                    cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, args=args)
    return tuple(with_strides(g, empty_like_strides(x)) for g, x in zip(grads, (q, k, v)))


@_attention_bwd.register_fake
def _(dout, q, k, v, *rest):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.custom_op("fastattn::attention_bwd_mask_grad", mutates_args=())
def _attention_bwd_mask_grad(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    attn_mask: Tensor, alibi_slopes: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
    scale: float, causal: bool, bottom_right: bool, window_left: int, window_right: int,
    softcap: float, dropout_p: float, seed: int, offset: int, max_seqlen_q: int, max_seqlen_k: int,
    deterministic: bool, num_splits: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = _args(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, seed, offset,
                 max_seqlen_q, max_seqlen_k, deterministic, num_splits)
    impl = dispatch.implementation("attention_bwd_mask_grad", backend)
    dq, dk, dv, dmask = impl.fn(dout, q, k, v, out, lse, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                                cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, args=args)
    return (*(with_strides(g, empty_like_strides(x)) for g, x in zip((dq, dk, dv), (q, k, v))),
            with_strides(dmask, _dense_strides(dmask)))


@_attention_bwd_mask_grad.register_fake
def _(dout, q, k, v, out, lse, attn_mask, *rest):
    dmask = q.new_empty(q.shape[0], q.shape[1], q.shape[2], k.shape[2], dtype=attn_mask.dtype)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dmask


def _dense_strides(t: Tensor) -> tuple[int, ...]:
    # What the fake implementations' new_empty(...) promise: a contiguous tensor.
    return torch.empty(t.shape, device="meta").stride()


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, alibi_slopes, cu_q, cu_k = inputs[:7]
    ctx.options = inputs[7:-1]  # the AttentionArgs fields and the backend name
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, alibi_slopes, cu_q, cu_k, inputs[-1])


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, attn_mask, alibi_slopes, cu_q, cu_k, sink = ctx.saved_tensors
    # dout may arrive non-contiguous or expanded (e.g. from .sum()); kernels want real strides.
    dout = dout.contiguous() if dout.stride(-1) != 1 or 0 in dout.stride() else dout
    dmask = None
    if ctx.needs_input_grad[3]:  # a float attn_mask that requires grad (the backend was chosen for it)
        dq, dk, dv, dmask = _attention_bwd_mask_grad(dout, q, k, v, out, lse, attn_mask, alibi_slopes, cu_q, cu_k,
                                                     *ctx.options)
    else:
        dq, dk, dv = _attention_bwd(dout, q, k, v, out, lse, attn_mask, alibi_slopes, cu_q, cu_k, *ctx.options)
    # out and lse already include the sink, so the backward above is the gradient with it.
    dsink = sink_grad(dout, out, lse, sink) if ctx.needs_input_grad[-1] else None
    return (dq, dk, dv, dmask) + (None,) * (3 + len(ctx.options)) + (dsink,)


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def attention(
    q: Tensor, k: Tensor, v: Tensor, args: AttentionArgs, backend: str, *,
    attn_mask: Optional[Tensor] = None, alibi_slopes: Optional[Tensor] = None,
    cu_seqlens_q: Optional[Tensor] = None, cu_seqlens_k: Optional[Tensor] = None,
    learnable_sink: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Run the core attention op on the concrete ``backend`` (already selected).

    Shapes and semantics are those of :func:`fastattn.reference.attention` (minus
    ``dropout_mask``: backends draw their own from ``args.seed``/``args.offset``).
    Returns ``(out, lse)``; differentiable with respect to ``q``, ``k``, ``v`` (and a float
    ``attn_mask``, and ``learnable_sink``).
    """
    return _attention_fwd(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                          *astuple(args), backend, learnable_sink)
