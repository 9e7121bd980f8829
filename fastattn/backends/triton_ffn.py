"""The ``triton`` backend of the feed-forward core ops: :mod:`fastattn.kernels.activations`
(``gated_act_*``, ``bias_gelu_*``) and :mod:`fastattn.kernels.feed_forward`
(``feed_forward_*``).

The kernels take fp16, bf16 and fp32 (computed in fp32) on CUDA tensors, and on CPU
tensors when ``TRITON_INTERPRET=1`` (the Triton interpreter, for tests and checks);
float64 is left to the reference backend.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fastattn import dispatch
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


def _available(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return None
        return ("Triton kernels run on CPU tensors only through the interpreter: "
                "set TRITON_INTERPRET=1 before importing triton")
    return f"Triton kernels do not run on {device.type} tensors"


# The attention backend module declares the "triton" availability check too; whichever
# is imported first declares it, so the two never disagree.
if "triton" not in dispatch._AVAILABILITY:
    dispatch.register_backend("triton", _available)

dispatch.register("gated_act_fwd", "triton", activations.gated_act_fwd, _supports)
dispatch.register("gated_act_bwd", "triton", activations.gated_act_bwd, _supports)
dispatch.register("bias_gelu_fwd", "triton", activations.bias_gelu_fwd, _supports)
dispatch.register("bias_gelu_bwd", "triton", activations.bias_gelu_bwd, _supports)
dispatch.register("feed_forward_fwd", "triton", feed_forward.feed_forward_fwd, _supports)
dispatch.register("feed_forward_bwd", "triton", feed_forward.feed_forward_bwd, _supports)
