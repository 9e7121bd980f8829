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


def pytest_sessionstart(session):
    """In CI (``CI=true``) a missing tool is a failure, not a skip: every backend the suite
    exercises on this machine must be available, or the run stops here saying which and why.
    (Skips stay legitimate only for GPU-only tests on a machine with no GPU.)"""
    if os.environ.get("CI") != "true":
        return
    import pytest
    import torch

    from fastattn import dispatch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    missing = {name: why for name, why in dispatch.available_backends(device).items() if why is not None}
    if missing:
        raise pytest.UsageError(
            "CI=true: backends unavailable on this machine (their tests would be skipped): "
            + "; ".join(f"{name}: {why}" for name, why in missing.items())
        )
