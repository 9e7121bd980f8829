"""The ``python -m fastattn`` command line.

Subcommands:

* ``info``: versions, devices, compiled extensions and their archs, backends and why any is
  unavailable; ``--kernels`` for the static GPU kernel fitness report (``--json`` for records).
* ``bench``: microbenchmarks of every fastattn backend on the device against every peer
  importable in this process (torch SDPA by backend, flash-attn, xformers, Liger-Kernel,
  FlexAttention): table, ``--json`` with the full environment, ``--markdown``, ``--plot``.
  The harness is ``benchmarks/fastattn_bench`` of a source checkout (:mod:`fastattn.cli.bench`
  finds it), not part of the installed package.
* ``verify``: every backend available here against the float64 reference, forward and
  backward, with a pass/fail table; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``info``, ``bench`` and ``verify`` subcommands."""
    from fastattn.cli import bench, info, verify

    parser = argparse.ArgumentParser(prog="python -m fastattn",
                                     description="fastattn's command line: info, bench, verify.")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench,verify}")
    sub.required = True
    info.add_parser(sub)
    bench.add_parser(sub)
    verify.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    # bench's options belong to the harness, which is loaded only when bench runs: the words
    # after ``bench`` pass through unparsed; any other command takes no unknown word.
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return int(args.func(args, rest) or 0)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args) or 0)
