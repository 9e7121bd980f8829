"""Shared pytest setup.

Without a GPU the Triton kernels are tested on CPU tensors under the Triton
interpreter, which must be switched on before anything imports triton: that is done
here, at collection start. With a GPU the compiled kernels are tested instead.
"""
import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
