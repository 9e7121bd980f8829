"""The ``triton`` backend of the feed-forward core ops: :mod:`fastattn.kernels.activations`
(``gated_act_*``, ``bias_gelu_*``) and :mod:`fastattn.kernels.feed_forward`
(``feed_forward_*``).

The kernels take fp16, bf16 and fp32 (computed in fp32) on CUDA tensors, and on CPU
tensors when ``TRITON_INTERPRET=1`` (the Triton interpreter, for tests and checks);
float64 is left to the reference backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn.kernels import activations, feed_forward

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _supports(*args) -> Optional[str]:
    """``None`` when every tensor among ``args`` has a dtype the kernels take, else why not.

    Written over ``*args`` so that it serves each op's forward and backward signature.
    """
    for t in args:
        if isinstance(t, torch.Tensor) and t.dtype not in _DTYPES:
            return f"the Triton kernels take float16, bfloat16 or float32, got {str(t.dtype).replace('torch.', '')}"
    return None


OPS = {
    "gated_act_fwd": (activations.gated_act_fwd, _supports),
    "gated_act_bwd": (activations.gated_act_bwd, _supports),
    "bias_gelu_fwd": (activations.bias_gelu_fwd, _supports),
    "bias_gelu_bwd": (activations.bias_gelu_bwd, _supports),
    "feed_forward_fwd": (feed_forward.feed_forward_fwd, _supports),
    "feed_forward_bwd": (feed_forward.feed_forward_bwd, _supports),
}
