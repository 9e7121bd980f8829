"""Triton kernels of fastattn, installed as ``fastattn.kernels`` (never a top-level
``kernels`` package): ``import fastattn.kernels.attention``.

Besides the kernel modules: ``_interpreter`` corrects the Triton interpreter's bf16
``tl.dot`` (``ensure_interpreter_fixes()``, called by every launcher); ``_configs`` holds the
arch limits, the compiler-report rule that picks candidate configs, and the case description
of each module's ``aot_cases()`` (compiled for sm_80..sm_90 with no GPU by
:mod:`fastattn.buildcheck.triton_aot`). Importing this package imports nothing else."""

if __name__ == "kernels":
    # This directory was found as a *top-level* ``kernels`` module: the repository root is on
    # sys.path (``python -m pytest``, ``python -m fastattn``, a REPL started in the checkout).
    # ``kernels`` is Hugging Face's package (a dependency of transformers), so hand the import
    # over to the one installed further down sys.path, or fail as a missing module would. This
    # one rule covers every way of running code from the root, unlike per-entry-point sys.path
    # tricks. (Leaving out this __init__.py would make the directory a namespace portion that
    # loses to an installed package, but setuptools' editable finder cannot then map it to
    # ``fastattn.kernels``.) tests/test_no_kernels_shadowing.py checks both outcomes.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _repository]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None:
        raise ModuleNotFoundError(
            "No module named 'kernels' (the repository's kernels/ directory is fastattn.kernels, "
            "not a top-level package)", name="kernels")
    _installed = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _installed  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_installed)
