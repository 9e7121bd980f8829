"""The integer codes the compiled kernels take for element types and gated activations.

They mirror ``csrc/common/dtype.h``, the one table of codes (tests check both
sides agree by running the kernels with them).
"""
from __future__ import annotations

import torch

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
}
"""torch dtype -> code of ``fastattn::DType``."""

ACTIVATION_CODES: dict[str, int] = {
    "swiglu": 0,      # silu(gate) * up
    "geglu": 1,       # gelu(gate) * up, exact erf GELU
    "geglu_tanh": 2,  # gelu(gate) * up, tanh approximation
}
"""Gated activation name (as the ``gated_act_*`` core ops take it) -> code of
``fastattn::GatedActivation``."""


def dtype_code(dtype: torch.dtype) -> int:
    """The kernel code of ``dtype``; ``TypeError`` for a dtype no native kernel takes."""
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(
            f"the native kernels take float32, float16 or bfloat16 tensors, not {dtype}"
        ) from None


def activation_code(activation: str) -> int:
    """The kernel code of a gated activation name; ``ValueError`` for an unknown one."""
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATION_CODES)}, got {activation!r}"
        ) from None
