"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/cuda``.

``kernels`` loads the nvcc build (``fastattn._cuda``, CUDA tensors) and its host-simulator build
(``fastattn._cuda_sim``, CPU tensors), gives the availability rule and serves the activations,
softmax and KV-cache decoding; ``attention`` serves the attention forward and backward.
"""
from fastattn.backends.cuda import attention, kernels
from fastattn.backends.cuda.kernels import available

OPS = {**kernels.OPS, **attention.OPS}
"""Every core op the CUDA C++ kernels serve: ``(fn, supports)`` per op."""

__all__ = ["available", "OPS"]
