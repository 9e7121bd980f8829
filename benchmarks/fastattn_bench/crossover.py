"""What the CPU crossover benchmarks (``bench_cpu_crossover.py``, ``bench_cpu_activation_crossover.py``,
``bench_cpu_ffn_crossover.py``) record about a run and where they store it.

Each run ends in one record, ``{"machine", "command", "entries"}``: the machine (CPU model and
cores, the thread counts measured, torch, the commit, the load average, and what the benchmark
adds, e.g. the ISA), the command line, and one entry per measured case. ``--json PATH`` writes
it with the full :func:`~fastattn_bench.environment.environment` beside; ``--write`` stores it
as the table ``auto`` reads (a :class:`fastattn.backends.cpu.measured_table.MeasuredTable`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from .environment import environment


def run_record(script: str, entries: list[dict], threads, **machine) -> tuple[dict, dict]:
    """``(record, environment)`` of a run of ``benchmarks/<script>`` (with this process's
    arguments) that measured ``entries`` at ``threads``; ``machine`` adds fields to the
    machine's description (after cores)."""
    env = environment("cpu")
    described = dict(cpu=env["cpu_model"], cores=env["cpu_cores"], **machine, threads=list(threads),
                     torch=env["torch"], commit=env["git_commit"], load_average=env["load_average"])
    command = " ".join([f"python benchmarks/{script}"] + sys.argv[1:])
    return dict(machine=described, command=command, entries=entries), env


def store(record: dict, env: dict, json_path: Optional[Path], table=None) -> None:
    """Write ``record`` with ``env`` to ``json_path`` (if given) and as ``table`` (if given: the
    ``MeasuredTable`` a ``--write`` replaces)."""
    if json_path:
        Path(json_path).write_text(json.dumps(dict(record, environment=env), indent=1) + "\n")
    if table is not None:
        table.write(record)
        print(f"wrote {table.path}")
