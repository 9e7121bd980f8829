"""fastattn: fused causal-masked softmax attention and feed-forward kernels for
PyTorch, in Triton and CUDA C++, as drop-in replacements for PyTorch functions
and modules.

Functional ops (each takes ``backend=`` "auto" | "triton" | "cuda" | "cpu" | "reference"):
:func:`scaled_dot_product_attention`, :func:`flash_attn_func`,
:func:`flash_attn_varlen_func`, :func:`flash_attn_with_kvcache`,
:func:`scaled_masked_softmax`, :func:`swiglu`, :func:`geglu`, :func:`bias_gelu`,
:func:`feed_forward`. ``with fastattn.backend("triton"): ...`` selects a backend
for a block. :mod:`fastattn.reference` is the pure-PyTorch oracle.
"""
from fastattn import reference
from fastattn.dispatch import available_backends, backend
from fastattn.functional import (
    bias_gelu,
    feed_forward,
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    geglu,
    scaled_dot_product_attention,
    scaled_masked_softmax,
    swiglu,
)

__version__ = "0.1.0"

__all__ = [
    "scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
    "scaled_masked_softmax", "swiglu", "geglu", "bias_gelu", "feed_forward",
    "backend", "available_backends", "reference", "__version__",
]


def __getattr__(name):
    # The modules/patching layer imports transformers-facing code lazily: keep `import fastattn` light.
    if name in ("nn", "patch", "unpatch", "verify", "PatchReport", "VerifyReport", "integrations"):
        import importlib

        if name in ("nn", "integrations"):
            return importlib.import_module(f"fastattn.{name}")
        module = importlib.import_module("fastattn.patching")
        return getattr(module, name)
    raise AttributeError(f"module 'fastattn' has no attribute {name!r}")
