"""Public ``scaled_masked_softmax``: explicit attention probabilities."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.ops.softmax import scaled_masked_softmax as _core_softmax


def scaled_masked_softmax(scores: Tensor, mask: Optional[Tensor] = None, scale: float = 1.0, causal: bool = False,
                          *, backend: Optional[str] = None) -> Tensor:
    """Fused ``softmax(scale * scores + mask)`` over the last dim, Megatron-LM's
    ``FusedScaleMaskSoftmax`` semantics.

    Args:
        scores: ``(..., Lq, Lk)`` fp16/bf16/fp32 (float64 on the reference backend).
        mask: broadcastable to ``scores``: bool with **True = masked out** (Megatron's
            convention, the opposite of SDPA's), or a float of ``scores``' dtype added
            after scaling (``-inf`` masks out).
        scale: multiplies the scores before masking.
        causal: also mask ``j > i`` (aligned top-left).
        backend: see :func:`fastattn.scaled_dot_product_attention`.

    Returns:
        Probabilities of ``scores``' shape and dtype, computed in fp32. A row with every
        position masked gives 0 (as torch's SDPA does), not NaN. Differentiable (fused
        backward ``dx = scale * y * (dy - sum(dy * y))``).
    """
    check.tensor("scores", scores, min_ndim=2)
    scale = check.optional_scale("scale", scale)
    if scale is None:
        raise TypeError("scale must be a float, got None")
    causal = check.boolean("causal", causal)
    if mask is not None:
        check.same_device(("scores", "mask"), scores, mask)
        if mask.dtype != scores.dtype and mask.dtype.is_floating_point:
            raise TypeError(f"a float mask must have scores' dtype ({scores.dtype}), got {mask.dtype}")
        check.mask("mask", mask, scores.dtype, scores.shape, bool_meaning="True = masked out")
    backend = dispatch.check_backend_name(backend) if backend is not None else None
    ops = ("softmax_fwd", "softmax_bwd") if scores.requires_grad else ("softmax_fwd",)
    name = dispatch.select(ops, backend, scores.device, scores, mask, scale, causal)
    return _core_softmax(scores, mask, scale, causal, name)
