"""Backend implementations. Importing this package registers every backend
that can be imported on this machine with :mod:`fastattn.dispatch`; a backend
whose module fails to import (e.g. no Triton) is recorded as unavailable with
the import error as its reason."""
import importlib

from fastattn import dispatch

IMPORT_ERRORS: dict[str, str] = {}

# reference first: it must always be there, it ends every ``auto`` list.
for _module in ("reference", "cpu_native", "cpu_attention", "cpu_kvcache", "triton_attention", "triton_ffn",
                "triton_softmax", "triton_decode", "cuda", "cuda_attention"):
    try:
        importlib.import_module(f"fastattn.backends.{_module}")
    except ModuleNotFoundError as exc:  # a backend file not in this installation, or its dependency
        if exc.name != f"fastattn.backends.{_module}":
            IMPORT_ERRORS[_module] = f"{type(exc).__name__}: {exc}"
    except ImportError as exc:  # a compiled extension that failed to load
        IMPORT_ERRORS[_module] = f"{type(exc).__name__}: {exc}"
