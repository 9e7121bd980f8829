"""pytest setup for the benchmarks: ``pytest benchmarks/ --benchmark-only``.

Benchmark files are named ``bench_<op>.py`` (not ``test_*.py``, so the test suite never
runs them); this hook collects them when pytest is pointed at this directory. The Triton
interpreter and the simulated CUDA build are never timed: :func:`fastattn_bench.impls.fastattn_backends`
leaves them out whatever ``TRITON_INTERPRET`` says.
"""
import pytest


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself: don't add it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
