"""``python -m fastattn bench``: the entry point of the benchmark harness.

The harness (cases, peers, timers, peaks, output) is the ``fastattn_bench`` package in
``benchmarks/`` of a fastattn source checkout; the installed package does not ship it. This
command finds it and hands it every word after ``bench`` (its options and ``--help`` are the
harness's). Looked for, in order: an importable ``fastattn_bench`` (e.g. run from
``benchmarks/``), ``benchmarks/fastattn_bench`` next to the imported ``fastattn`` package (an
editable install, or a run from the checkout's root), then under the working directory (a
checkout with fastattn installed from a wheel).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

HARNESS = "fastattn_bench"


class HarnessNotFound(RuntimeError):
    """The benchmark harness is not in this installation (e.g. fastattn installed from a wheel)."""


def _candidates() -> list[Path]:
    import fastattn

    roots = [Path(fastattn.__file__).resolve().parent.parent, Path.cwd()]
    return [root / "benchmarks" / HARNESS for root in dict.fromkeys(roots)]


def load_harness():
    """The ``fastattn_bench`` package (imported once, under that name, so that the benchmark files
    of the checkout and this command share it). Raises :class:`HarnessNotFound`, saying where it
    looked and what to do, when there is none."""
    if HARNESS in sys.modules:
        return sys.modules[HARNESS]
    if importlib.util.find_spec(HARNESS) is not None:
        return importlib.import_module(HARNESS)
    for directory in _candidates():
        init = directory / "__init__.py"
        if init.is_file():
            spec = importlib.util.spec_from_file_location(HARNESS, init, submodule_search_locations=[str(directory)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[HARNESS] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[HARNESS]
                raise
            return module
    looked = ", ".join(str(d) for d in _candidates())
    raise HarnessNotFound(
        "python -m fastattn bench runs the benchmark harness of a fastattn source checkout "
        f"(benchmarks/{HARNESS}/), which the installed package does not ship; not found in {looked}. "
        "Clone the repository and run the command from its root (or pip install -e . there).")


def add_parser(sub) -> None:
    """Register ``bench`` on ``sub`` (an argparse subparsers object); its options are parsed by
    the harness, so this parser takes none (``--help`` included)."""
    p = sub.add_parser("bench", add_help=False, help="microbenchmarks against every peer importable here "
                                                     "(needs a source checkout: benchmarks/fastattn_bench)")
    p.set_defaults(func=run)


def run(args, rest: list[str]) -> int:
    """Hand ``rest`` (the words after ``bench``) to the harness; 2 when it is not found."""
    try:
        harness = load_harness()
    except HarnessNotFound as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return harness.main(rest)
