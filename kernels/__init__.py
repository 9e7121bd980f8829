"""Triton kernels of fastattn, installed as ``fastattn.kernels`` (never a top-level
``kernels`` package): ``import fastattn.kernels.attention``.

Besides the kernel modules: ``_interpreter`` corrects the Triton interpreter's bf16
``tl.dot`` (``ensure_interpreter_fixes()``, called by every launcher) and ``_aot`` compiles
each module's ``aot_cases()`` for sm_80..sm_90 with no GPU (``kernel_reports(archs)``).
Importing this package imports nothing else."""
