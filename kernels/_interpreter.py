"""Corrections to the Triton interpreter (``TRITON_INTERPRET=1``) that fastattn's kernels need.

Triton's interpreter stores bfloat16 values as their raw ``uint16`` bit patterns
(numpy has no bfloat16), which goes wrong in two places (seen in Triton 3.7 to 3.9):

* ``tl.dot`` (``InterpreterBuilder.create_dot``) converts only 8-bit floats before
  calling ``np.matmul``, so a bf16 dot multiplies the bit patterns as *integers*:
  results are off by ~1e10;
* the fp32 -> bf16 cast (``cast_impl``, behind ``.to(tl.bfloat16)`` and stores)
  *truncates* (drops the low 16 bits) where the GPU rounds to nearest even
  (``cvt.rn.bf16.f32``): up to one bf16 ulp of error instead of half of one.

:func:`ensure_interpreter_fixes` wraps ``create_dot`` so that bf16 operands are
decoded to float32 (exactly: every bf16 value is a float32 value) before the matmul,
which then accumulates in the accumulator's dtype as for every other input type, and
wraps ``cast_impl`` so fp32 -> bf16 rounds as the hardware does.

It also supplies a reduction into a tensor descriptor (``desc.atomic_add``, the Hopper
backward's atomic dQ: ``cp.reduce.async.bulk.tensor``), which the interpreter's builder lacks
(``create_descriptor_reduce``, Triton 3.9): every reduction kind the language emits (add, min,
max, and, or, xor) element by element over the tile, with the out-of-bounds elements dropped as the
hardware drops them. Each fix is applied
only when a probe shows the installed Triton needs it. It is idempotent, a no-op when the interpreter is not in use, and every fastattn
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


def _bf16_cast_truncates(builder_cls) -> bool:
    """Probe the fp32 -> bf16 cast with a value just above a rounding midpoint."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    above_half = np.array([0x3F808001], dtype=np.uint32).view(np.float32)  # rounds up to 0x3F81
    out = builder_cls.cast_impl(builder_cls.__new__(builder_cls), TensorHandle(above_half, tl.float32), tl.bfloat16)
    return int(np.asarray(out.data).view(np.uint16)[0]) != 0x3F81


def _round_bf16_casts(builder_cls) -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = builder_cls.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.asarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            # Round to nearest even on the 16 dropped bits: add 0x7FFF plus the kept lsb, then drop.
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            rounded[np.isnan(src.data)] = 0x7FC0  # a carry must not turn a NaN into an infinity
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return original(self, src, dst_type)

    cast_impl._fastattn_bf16_fix = True
    builder_cls.cast_impl = cast_impl


def _add_descriptor_reduce(builder_cls) -> None:
    from triton._C.libtriton import ir

    kinds, ops = ir.DESCRIPTOR_REDUCE_KIND, ir.ATOMIC_OP
    # The kinds Triton's language emits (tensor_descriptor.atomic_add/min/max/and/or/xor; it has
    # no inc/dec), as the interpreter's atomics: float add is FADD, unsigned min/max UMIN/UMAX.
    signed = {kinds.ADD: ops.ADD, kinds.MIN: ops.MIN, kinds.MAX: ops.MAX,
              kinds.AND: ops.AND, kinds.OR: ops.OR, kinds.XOR: ops.XOR}
    unsigned = {**signed, kinds.MIN: ops.UMIN, kinds.MAX: ops.UMAX}

    def create_descriptor_reduce(self, kind, desc, value, indices):
        scalar = value.dtype.scalar
        if scalar.is_floating():
            op = ops.FADD if kind == kinds.ADD else signed[kind]
        else:
            op = (unsigned if scalar.is_int_unsigned() else signed)[kind]
        ptrs, mask = desc.materialize_pointers(indices)  # mask: inside the tensor's bounds
        return self.create_atomic_rmw(op, ptrs, value, mask, ir.MEM_SEMANTIC.RELAXED, None)

    builder_cls.create_descriptor_reduce = create_descriptor_reduce


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
    if not hasattr(builder_cls, "create_descriptor_reduce"):
        _add_descriptor_reduce(builder_cls)
    if not getattr(builder_cls.cast_impl, "_fastattn_bf16_fix", False) and _bf16_cast_truncates(builder_cls):
        _round_bf16_casts(builder_cls)
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
