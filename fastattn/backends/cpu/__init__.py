"""The ``cpu`` backend: the native CPU kernels of ``csrc/cpu`` (``fastattn._C``).

One module per op family (``activations``, ``ffn``, ``attention``, ``kvcache``), and the measured
crossover tables (``*_crossover.py`` with their ``.json``) that send the sizes where torch's own
CPU ops are faster to those instead. The crossover modules need no extension: the functional ops
import them at ``import fastattn``, so a missing or broken ``fastattn._C`` makes this backend
unavailable (with the reason) rather than failing that import.
"""
from typing import Optional

import torch

try:
    from fastattn.backends.cpu import activations, attention, ffn, kvcache
except ImportError as exc:
    if exc.name != "fastattn._C":  # a bug in a backend module, not a missing extension
        raise
    _EXTENSION_ERROR: Optional[str] = f"fastattn._C was not built or failed to load ({type(exc).__name__}: {exc})"
    OPS: dict = {}
else:
    _EXTENSION_ERROR = None
    OPS = {**activations.OPS, **ffn.OPS, **attention.OPS, **kvcache.OPS}
    """Every core op the native CPU kernels serve: ``(fn, supports)`` per op."""


def available(device: torch.device) -> Optional[str]:
    """``None`` if the native CPU kernels can run on ``device``, else why not."""
    if _EXTENSION_ERROR is not None:
        return _EXTENSION_ERROR
    return activations.available(device)


__all__ = ["available", "OPS"]
