"""Test-harness correction of the Triton interpreter's float32 -> bfloat16 cast.

Triton 3.9's interpreter (``InterpreterBuilder.cast_impl``, behind ``.to(tl.bfloat16)``)
*truncates* float32 to bfloat16 (it drops the low 16 bits) where the GPU rounds to
nearest even (``cvt.rn.bf16.f32``): an error of up to one bf16 ulp instead of half of
one, which flash-attn's error-ratio rule rightly rejects for a kernel that rounds its
fp32 result once (a softmax). :func:`rounded_bf16_casts` makes the interpreter round as
the hardware does, for the duration of a test; compiled kernels are unaffected.
"""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def rounded_bf16_casts():
    """Within the block, the interpreter's fp32 -> bf16 casts round to nearest even."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.array(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            # Round to nearest even on the 16 dropped bits: add 0x7FFF plus the kept lsb, then drop.
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(src.data)
            rounded[nan] = 0x7FC0  # a carry must not turn a NaN into an infinity
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
    try:
        yield
    finally:
        builder.cast_impl = original
