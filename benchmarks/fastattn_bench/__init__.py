"""The benchmark harness behind ``python -m fastattn bench`` and the pytest-benchmark files of
this directory: one set of cases, implementations, timers and FLOP counts for both.

* :mod:`.cases`: the benchmark cases and their presets (``--quick``, ``--full``, ``--sizes``);
* :mod:`.impls`: who is timed, every fastattn backend available on the device and every peer
  importable here (torch SDPA by backend, flash-attn, xformers, FlexAttention, Liger-Kernel);
* :mod:`.measure`: FLOP and byte counts (flash-attn's conventions), CPU and GPU timers;
* :mod:`.memory`: the peak memory of one call, in a fresh process;
* :mod:`.crossover`: the record of a CPU crossover benchmark run (``bench_cpu_*crossover.py``)
  and where it is stored;
* :mod:`.peaks`: the device's peak throughput (datasheet table, or measured);
* :mod:`.environment`: the record of where a measurement was taken;
* :mod:`.bench`: the command itself (:func:`main`); :mod:`.output` renders its results,
  :mod:`.schema` describes and validates its JSON.

It lives in the source checkout, not in the installed package: ``python -m fastattn bench``
finds it here (:func:`fastattn.cli.bench.load_harness`), and the files of this directory import
it as ``fastattn_bench`` (the directory is on ``sys.path`` for a script run from it and for
``pytest benchmarks/``).
"""
from __future__ import annotations


def main(argv) -> int:
    """``python -m fastattn bench ARGV...`` (see :mod:`.bench`); returns the exit status."""
    from .bench import main as bench_main

    return bench_main(argv)
