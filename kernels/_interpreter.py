"""Corrections to the Triton interpreter (``TRITON_INTERPRET=1``) that fastattn's kernels need.

Triton's interpreter stores bfloat16 values as their raw ``uint16`` bit patterns
(numpy has no bfloat16). Its ``tl.dot`` (``InterpreterBuilder.create_dot``) converts
only 8-bit floats before calling ``np.matmul``, so a bf16 dot multiplies the bit
patterns as *integers*: results are off by ~1e10 (seen in Triton 3.7 to 3.9). Every
other bf16 op (casts, loads, stores) is right, because it goes through
``_convert_float``.

:func:`ensure_interpreter_fixes` wraps ``create_dot`` so that bf16 operands are
decoded to float32 (exactly: every bf16 value is a float32 value) before the matmul,
which then accumulates in the accumulator's dtype as for every other input type. It
is idempotent, a no-op when the interpreter is not in use, and every fastattn
launcher calls it, so ``backend="triton"`` on bf16 CPU tensors is right for tests,
users and outside checks alike.
"""
from __future__ import annotations

import os

_APPLIED = False


def interpreter_active() -> bool:
    """Whether Triton kernels run on the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _bf16_dot_is_wrong(builder_cls) -> bool:
    """Probe the interpreter's dot with a 1x1 bf16 product (1.0 * 1.0)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    one = TensorHandle(np.array([[0x3F80]], dtype=np.uint16), tl.bfloat16)  # bf16 1.0
    acc = TensorHandle(np.zeros((1, 1), dtype=np.float32), tl.float32)
    out = builder_cls.create_dot(builder_cls.__new__(builder_cls), one, one, acc, None, None)
    return float(out.data[0, 0]) != 1.0


def ensure_interpreter_fixes() -> None:
    """Patch the Triton interpreter's bf16 ``tl.dot`` once; safe to call any number of times.

    Does nothing when ``TRITON_INTERPRET`` is not ``1`` (compiled kernels are unaffected)
    or when the installed Triton already computes bf16 dots correctly.
    """
    global _APPLIED
    if _APPLIED or not interpreter_active():
        return
    _APPLIED = True
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder_cls = interpreter.InterpreterBuilder
    if getattr(builder_cls.create_dot, "_fastattn_bf16_fix", False) or not _bf16_dot_is_wrong(builder_cls):
        return
    original = builder_cls.create_dot

    def _to_f32(handle):
        if handle.dtype.scalar == tl.bfloat16:
            # bf16 is the top half of an fp32: shifting the bits up 16 decodes it exactly.
            data = (handle.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
            return interpreter.TensorHandle(data, tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, _to_f32(a), _to_f32(b), d, input_precision, max_num_imprecise_acc)

    create_dot._fastattn_bf16_fix = True
    create_dot._fastattn_original = original
    builder_cls.create_dot = create_dot
