"""Test-harness view of the interpreter's fp32 -> bfloat16 rounding fix.

Triton 3.9's interpreter truncates fp32 -> bf16 casts where the GPU rounds to nearest
even; ``kernels/_interpreter.py`` (``ensure_interpreter_fixes``, called by every fastattn
launcher) corrects it for users and tests alike. :func:`rounded_bf16_casts` makes sure
the fix is in place for the duration of a test that launches kernels directly.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def rounded_bf16_casts():
    """Within the block, the interpreter's fp32 -> bf16 casts round to nearest even."""
    from fastattn.kernels._interpreter import ensure_interpreter_fixes

    ensure_interpreter_fixes()
    yield
