"""The ``triton`` backend: the Triton kernels of :mod:`fastattn.kernels` behind the core ops.

One module per op family (``attention``, ``decode``, ``ffn``, ``softmax``); the availability rule
is the attention module's (CUDA tensors need a GPU; CPU tensors need the Triton interpreter,
switched on before Triton was imported). Importing this package imports Triton, so
:mod:`fastattn.dispatch` does it on first use only, never at ``import fastattn``.
"""
from fastattn.backends.triton import attention, decode, ffn, softmax
from fastattn.backends.triton.attention import available

OPS = {**attention.OPS, **ffn.OPS, **softmax.OPS, **decode.OPS}
"""Every core op the Triton kernels serve: ``(fn, supports)`` per op."""

__all__ = ["available", "OPS"]
