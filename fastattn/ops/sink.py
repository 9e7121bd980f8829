"""Attention sinks (gpt-oss; FlashAttention-4's ``learnable_sink``) for every backend.

A sink is one more logit ``s_h`` per query head in every row's softmax, with no value:
``out = sum_j exp(x_j) v_j / (sum_j exp(x_j) + exp(s_h))``. Given any backend's result without
the sink, ``(o, L)`` with ``L = log sum_j exp(x_j)``, the exact result with it is

    out = o * exp(L - L'),    L' = log(exp(L) + exp(s_h)) = logaddexp(L, s_h)

(a row that sees no key has ``o = 0``, ``L = +inf`` by convention: then ``out = 0``, ``L' = s_h``).
The backward needs no change: each backend's backward recomputes ``P = exp(x - L')`` from the
stored ``L'`` and uses ``delta = rowsum(dout * out)`` with the sink-scaled ``out``, which is the
gradient with the sink. The sink's own gradient is ``ds_h = -sum_rows exp(s_h - L') * delta``
(its probability times ``dP - delta``, with ``dP = 0``: it carries no value).
"""
from __future__ import annotations

import torch
from torch import Tensor


def apply_sink(out: Tensor, lse: Tensor, sink: Tensor) -> tuple[Tensor, Tensor]:
    """``out`` ``(B, H, Lq, Dv)`` and ``lse`` fp32 ``(B, H, Lq)`` of attention without the sink ->
    the same with sink logits ``sink`` ``(H,)``; ``out`` keeps its dtype (scaled in fp32)."""
    s = sink.float().view(1, -1, 1)
    empty = lse == float("inf")
    new_lse = torch.where(empty, s.expand_as(lse), torch.logaddexp(lse, s))
    weight = torch.where(empty, torch.zeros_like(lse), torch.exp(lse - new_lse))
    return (out.float() * weight.unsqueeze(-1)).to(out.dtype), new_lse


def sink_grad(dout: Tensor, out: Tensor, lse: Tensor, sink: Tensor) -> Tensor:
    """Gradient of the sink logits ``(H,)`` (in ``sink``'s dtype) for the cotangent ``dout`` of the
    sink-scaled ``out`` ``(B, H, Lq, Dv)`` whose LSE (sink included) is ``lse`` ``(B, H, Lq)``."""
    delta = (dout.float() * out.float()).sum(-1)
    p_sink = torch.exp(sink.float().view(1, -1, 1) - lse)
    return -(p_sink * delta).sum((0, 2)).to(sink.dtype)
