"""The ``triton`` backend of ``softmax_fwd``/``softmax_bwd``: :mod:`fastattn.kernels.softmax`
behind :func:`fastattn.scaled_masked_softmax` (Megatron-LM ``FusedScaleMaskSoftmax`` semantics).

fp16, bf16 and fp32 scores (computed in fp32), any row length, bool or float masks broadcast
by strides. CUDA tensors need a GPU; CPU tensors run on the Triton interpreter
(``TRITON_INTERPRET=1``), as the availability rule of :mod:`fastattn.backends.triton_attention`
says (declared here too if that module is missing, with the same rule).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn import dispatch
from fastattn.kernels import softmax as _kernels

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _available(device: torch.device) -> Optional[str]:
    try:
        from fastattn.backends.triton_attention import available
    except ImportError:  # the attention kernels are not in this installation: the same rule, here
        return _own_availability(device)
    return available(device)


def _own_availability(device: torch.device) -> Optional[str]:
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(_kernels._softmax_fwd_kernel, InterpretedFunction)
    if device.type == "cuda":
        if interpreted:
            return "TRITON_INTERPRET=1 is set: Triton runs on the CPU interpreter, not on CUDA tensors"
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device.type == "cpu":
        return None if interpreted else "set TRITON_INTERPRET=1 before Python imports triton to run Triton on CPU tensors"
    return f"Triton does not run on {device.type} tensors"


def supports(scores, mask=None, scale=1.0, causal=False) -> Optional[str]:
    """``None`` if the Triton softmax kernels compute this call, else the reason."""
    if scores.dtype not in _DTYPES:
        return f"the Triton softmax takes float16, bfloat16 or float32 scores, got {str(scores.dtype).replace('torch.', '')}"
    if mask is not None and mask.dtype != torch.bool and mask.dtype not in _DTYPES:
        return f"a mask of dtype {str(mask.dtype).replace('torch.', '')}"
    return None


def softmax_fwd(scores, mask, scale, causal):
    return _kernels.softmax_fwd(scores, mask, scale, causal)


def softmax_bwd(dprobs, probs, scale):
    return _kernels.softmax_bwd(dprobs, probs, scale)


if "triton" not in dispatch._AVAILABILITY:
    dispatch.register_backend("triton", _available)
dispatch.register("softmax_fwd", "triton", softmax_fwd, supports)
dispatch.register("softmax_bwd", "triton", softmax_bwd, supports)
