"""Peak memory of one call, measured in a fresh process (Linux).

What a call costs in memory is the growth of the process's peak resident set size (VmHWM) over
its resident size just before the call, with the inputs allocated and a warm-up made: outputs,
tensors saved for the backward, gradients, and every temporary, torch's allocations and a
native kernel's own scratch (malloc) alike. A fresh process per measurement, so that no
earlier call's memory is reused unseen; memory freed while making the inputs is handed back to
the OS (``malloc_trim``) and the peak counter reset (``/proc/self/clear_refs``) just before the
call.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

_CHILD = r"""
import ctypes, sys
sys.path.insert(0, {bench_dir!r})

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

{setup}
try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except OSError:
    pass
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status_kib("VmRSS")
result = call()
print((status_kib("VmHWM") - base) * 1024)
"""

BENCH_DIR = Path(__file__).resolve().parent.parent
"""``benchmarks/``: on the child's ``sys.path``, so that its setup imports the benchmark scripts
and ``fastattn_bench``."""


def peak_rss_growth(setup: str, timeout: float = 900) -> Optional[int]:
    """Bytes by which ``call()`` raises the peak RSS of a fresh Python process over its RSS just
    before the call; ``setup`` is Python source (at the top level, no indentation) that defines
    the no-argument ``call`` with its inputs allocated, after a warm-up call on a small case
    (imports, thread pools, allocator arenas are not counted). ``None`` if the child failed
    (its stderr's tail is printed)."""
    code = _CHILD.format(bench_dir=str(BENCH_DIR), setup=setup)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return int(res.stdout.strip().splitlines()[-1])
