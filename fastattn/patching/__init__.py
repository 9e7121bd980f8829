"""Swapping fastattn into existing models in place, undoing it, and verifying it.

``fastattn.patch(model)`` walks the module tree against one table
(:mod:`fastattn.patching.registry`), ``fastattn.unpatch(model)`` restores the originals,
``fastattn.verify(model, *inputs)`` compares fastattn with the original modules.
"""
from fastattn.patching.core import is_patched, patch, unpatch
from fastattn.patching.report import ModuleError, ParamError, PatchReport, Skip, Swap, VerifyReport
from fastattn.patching.verify import verify

__all__ = ["patch", "unpatch", "verify", "is_patched", "PatchReport", "VerifyReport", "Swap", "Skip",
           "ModuleError", "ParamError"]
