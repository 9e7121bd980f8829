"""``fastattn::scaled_masked_softmax`` forward/backward custom ops with autograd."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastattn import dispatch


@torch.library.custom_op("fastattn::scaled_masked_softmax_fwd", mutates_args=())
def _softmax_fwd(scores: Tensor, mask: Optional[Tensor], scale: float, causal: bool, backend: str) -> Tensor:
    return dispatch.implementation("softmax_fwd", backend).fn(scores, mask, scale, causal)


@_softmax_fwd.register_fake
def _(scores, mask, scale, causal, backend):
    return torch.empty_like(scores)


@torch.library.custom_op("fastattn::scaled_masked_softmax_bwd", mutates_args=())
def _softmax_bwd(dprobs: Tensor, probs: Tensor, scale: float, backend: str) -> Tensor:
    return dispatch.implementation("softmax_bwd", backend).fn(dprobs, probs, scale)


@_softmax_bwd.register_fake
def _(dprobs, probs, scale, backend):
    return torch.empty_like(probs)


def _setup_context(ctx, inputs, output):
    ctx.scale, ctx.backend = inputs[2], inputs[4]
    ctx.save_for_backward(output)


def _backward(ctx, dprobs):
    (probs,) = ctx.saved_tensors
    return _softmax_bwd(dprobs.contiguous(), probs, ctx.scale, ctx.backend), None, None, None, None


_softmax_fwd.register_autograd(_backward, setup_context=_setup_context)


def scaled_masked_softmax(scores: Tensor, mask: Optional[Tensor], scale: float, causal: bool, backend: str) -> Tensor:
    """Core op behind :func:`fastattn.scaled_masked_softmax` on an already selected backend."""
    return _softmax_fwd(scores, mask, scale, causal, backend)
