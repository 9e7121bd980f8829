"""Shared pytest setup.

Without a GPU the Triton kernels are tested on CPU tensors under the Triton
interpreter, which must be switched on before anything imports triton: that is done
here, at collection start. With a GPU the compiled kernels are tested instead.
"""
import os
import zlib

import pytest

_SHARD_SUMMARY = pytest.StashKey[str]()

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
    import torch

    from fastattn import dispatch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    missing = {name: why for name, why in dispatch.available_backends(device).items() if why is not None}
    if missing:
        raise pytest.UsageError(
            "CI=true: backends unavailable on this machine (their tests would be skipped): "
            + "; ".join(f"{name}: {why}" for name, why in missing.items())
        )


def pytest_runtest_setup(item):
    """``@pytest.mark.requires_backend("cuda")`` (or as a module's ``pytestmark``): skip, saying
    why, where that backend cannot run on the device its tests use (backend_cases.device_of: CPU
    tensors for ``"cpu"``; else CUDA tensors with a GPU, CPU tensors through the interpreter /
    simulator without one). In CI such a skip cannot happen:
    ``pytest_sessionstart`` has already stopped the run."""
    marks = list(item.iter_markers("requires_backend"))
    if not marks:
        return
    import torch

    from backend_cases import device_of  # the device each backend's tests run on
    from fastattn import dispatch

    for mark in marks:
        device = torch.device(device_of(mark.args[0]))
        why = dispatch.unavailable_reason(mark.args[0], device)
        if why is not None:
            pytest.skip(f"{mark.args[0]} backend unavailable on {device.type}: {why}")


def pytest_addoption(parser):
    parser.addoption(
        "--slow-shard", metavar="K/N", default=None,
        help="run every test not marked slow plus shard K (0-based) of N of the slow ones; a slow "
             "test's shard is crc32(node id) mod N, so the split is the same on every machine; "
             "tests marked exhaustive are left out")


def _parse_shard(spec: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--slow-shard must be K/N with integers 0 <= K < N, got {spec!r}") from None
    if not 0 <= k < n:
        raise pytest.UsageError(f"--slow-shard must be K/N with 0 <= K < N, got {spec!r}")
    return k, n


def pytest_collection_modifyitems(config, items):
    spec = config.getoption("--slow-shard")
    if spec is None:
        return
    k, n = _parse_shard(spec)
    kept, dropped, exhaustive, slow = [], [], [], 0
    for item in items:
        if item.get_closest_marker("exhaustive") is not None:
            # Too long for any CI shard (see the marker's description): run on purpose only.
            exhaustive.append(item)
        elif item.get_closest_marker("slow") is None:
            kept.append(item)
        else:
            slow += 1
            (kept if zlib.crc32(item.nodeid.encode()) % n == k else dropped).append(item)
    if dropped or exhaustive:
        config.hook.pytest_deselected(items=dropped + exhaustive)
    items[:] = kept
    config.stash[_SHARD_SUMMARY] = (f"slow tests: shard {k}/{n} selected {slow - len(dropped)} of {slow}"
                                    f" ({len(exhaustive)} exhaustive left out)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summary = config.stash.get(_SHARD_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_line(summary)


@pytest.fixture
def use_isa():
    """Force the native CPU kernels' instruction set for one test (``use_isa("avx2")``); restores
    the CPU's best afterwards."""
    from fastattn import _C

    def _use(name):
        assert _C.cpu_attention_use_isa(name), name

    yield _use
    _C.cpu_attention_use_isa("auto")


@pytest.fixture(params=[1, 2], ids=["thr1", "thr2"])
def threads(request):
    """torch's intra-op thread count, which the native CPU kernels use too: one, then two (the
    parallel paths: split key ranges, shared tiles); restored afterwards."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


@pytest.fixture
def poisoned():
    """A seeded torch RNG, and every tensor torch allocates uninitialised during the test
    filled with NaN (:func:`fastattn.testing.poisoned_allocations`), so an output element a
    kernel never writes fails the comparison."""
    import torch

    from fastattn import testing

    torch.manual_seed(0)
    with testing.poisoned_allocations():
        yield
