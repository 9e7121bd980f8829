"""The ``triton`` backend's attention: :mod:`fastattn.kernels.attention` behind the core ops.

Declares ``attention_fwd``/``attention_bwd`` (:data:`OPS`) and the availability rule of the
``triton`` backend: CUDA tensors need Triton and a GPU; CPU tensors run on the Triton interpreter,
which must have been switched on (``TRITON_INTERPRET=1``) before Triton was imported.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from fastattn.kernels import attention as _kernels

INTERPRETER_HINT = (
    "Triton kernels run on CPU tensors only under the Triton interpreter: set the environment "
    "variable TRITON_INTERPRET=1 before Python imports triton (e.g. `TRITON_INTERPRET=1 python ...`)"
)


def _interpreted() -> bool:
    # The interpreter is chosen when @triton.jit decorates a kernel, i.e. when the kernel module
    # is imported: the environment variable alone (set later) is not enough.
    from triton.runtime.interpreter import InterpretedFunction

    fn = _kernels._attn_fwd
    while not isinstance(fn, InterpretedFunction) and hasattr(fn, "fn"):
        fn = fn.fn
    return isinstance(fn, InterpretedFunction)


def available(device: torch.device) -> Optional[str]:
    """``None`` if Triton kernels can run on ``device``, else why not (and how to fix it)."""
    if device.type == "cuda":
        if _interpreted():
            return "TRITON_INTERPRET=1 is set: Triton runs on the CPU interpreter, not on CUDA tensors"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if device.type == "cpu":
        if _interpreted():
            return None
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return "TRITON_INTERPRET=1 was set after triton was imported; " + INTERPRETER_HINT
        return INTERPRETER_HINT
    return f"Triton does not run on {device.type} tensors"


def supports(q, k, v, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, args=None):
    """``None`` if the Triton attention forward computes this call, else the reason."""
    return _kernels.supports(q, k, v, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                             cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, args=args)


def supports_backward(q, k, v, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                      args=None):
    """``None`` if the Triton attention backward computes this call (given the forward's arguments)."""
    return _kernels.supports(q, k, v, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                             cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, args=args, direction="bwd")


# The kernels' launchers take the core ops' signature (``args`` as a keyword): they are the
# backend's implementations themselves, so a call reaches the launch through no adaptor frame.
attention_fwd = _kernels.attention_fwd
attention_bwd = _kernels.attention_bwd
attention_bwd_mask_grad = functools.partial(_kernels.attention_bwd, mask_grad=True)


OPS = {"attention_fwd": (attention_fwd, supports), "attention_bwd": (attention_bwd, supports_backward),
       "attention_bwd_mask_grad": (attention_bwd_mask_grad, supports_backward)}
