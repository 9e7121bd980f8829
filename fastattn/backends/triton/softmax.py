"""The ``triton`` backend of ``softmax_fwd``/``softmax_bwd``: :mod:`fastattn.kernels.softmax`
behind :func:`fastattn.scaled_masked_softmax` (Megatron-LM ``FusedScaleMaskSoftmax`` semantics).

fp16, bf16 and fp32 scores (computed in fp32), any row length, bool or float masks broadcast
by strides. CUDA tensors need a GPU; CPU tensors run on the Triton interpreter
(``TRITON_INTERPRET=1``), as the availability rule of :mod:`fastattn.backends.triton.attention`
says.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn.kernels import softmax as _kernels

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supports(scores, mask=None, scale=1.0, causal=False) -> Optional[str]:
    """``None`` if the Triton softmax kernels compute this call, else the reason."""
    if scores.dtype not in _DTYPES:
        return f"the Triton softmax takes float16, bfloat16 or float32 scores, got {str(scores.dtype).replace('torch.', '')}"
    if mask is not None and mask.dtype != torch.bool and mask.dtype not in _DTYPES:
        return f"a mask of dtype {str(mask.dtype).replace('torch.', '')}"
    return None


# The kernels' launchers take the core ops' signature: they are the backend's implementations
# themselves, so a call reaches the launch through no adaptor frame.
softmax_fwd = _kernels.softmax_fwd
softmax_bwd = _kernels.softmax_bwd


OPS = {"softmax_fwd": (softmax_fwd, supports), "softmax_bwd": (softmax_bwd, supports)}
