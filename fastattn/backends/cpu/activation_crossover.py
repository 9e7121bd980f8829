"""Where ``auto`` runs a gated activation on the CPU: fastattn's native kernel or torch's own ops.

``auto`` must never pick a fastattn CPU kernel where torch is faster. For the gated activations
(``swiglu``, ``geglu``, ``geglu_tanh``) that is decided by a measured table,
``activation_crossover.json`` next to this file, written by ``python
benchmarks/bench_cpu_activation_crossover.py --write``: for each (activation, dtype, forward or
forward+backward, thread count, element count), the ratio of the time of :func:`torch_gated`
(what ``auto`` runs instead) to the time of the native route (the kernel called directly when no
gradient is needed, the custom op with its autograd formula when one is), measured side by side
in one process on the machine it names. :func:`prefer_torch` follows the measured case nearest to a
call (the same activation, dtype and direction; the nearest thread count, then element count):
torch's ops where they were faster by more than the measurement noise (:data:`ON_PAR`). Not a
single size floor: torch's ops win at small sizes in float32, where a call costs more in fixed
overhead than in arithmetic, but for 16-bit inputs they upcast (extra passes, float32
temporaries) and lose at every size, and the exact-erf GELU kernel loses at large sizes in
float32. A dtype with no entry keeps the native kernel.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from fastattn.backends.cpu.measured_table import MeasuredTable

TABLE = MeasuredTable("activation_crossover.json")

_ACT = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": functools.partial(F.gelu, approximate="tanh"),
}


def measures(fn) -> bool:
    """Whether ``fn`` (a ``gated_act_fwd`` implementation) is the native kernel the table
    measured, which carries the attribute ``torch_crossover``: a stand-in registered in its
    place (``dispatch.register``) keeps ``auto``'s choice."""
    return getattr(fn, "torch_crossover", False)


ON_PAR = 0.9
"""A ratio (torch's time over fastattn's) of at least this counts as on par: at mid and large
sizes both routes stream the same bytes at about the same speed, and on a shared machine their
measured times differ by up to this much either way; the native kernel is kept there for its
memory (no float32 temporaries). Below it torch's ops are faster by more than that noise."""


def prefer_torch(activation: str, dtype: torch.dtype, numel: int, grad: bool) -> bool:
    """Whether torch's ops ran faster than the native route (a ratio below :data:`ON_PAR`) in the
    measured case nearest to a call of ``numel`` elements of ``dtype`` (``grad``: forward and
    backward, else the forward alone): the same activation, dtype and direction, the nearest
    thread count to ``torch.get_num_threads()``, then the nearest element count (log scale). No
    measurement: the native kernel."""
    return _prefer_torch(activation, dtype, grad, torch.get_num_threads(), numel)


@functools.lru_cache(maxsize=4096)
def _prefer_torch(activation: str, dtype: torch.dtype, grad: bool, threads: int, numel: int) -> bool:
    # Cached: a model asks again for every layer of every step, at a handful of sizes.
    key = (activation, str(dtype).replace("torch.", ""), "fwd+bwd" if grad else "fwd")
    rows = [e for e in TABLE.entries() if (e["activation"], e["dtype"], e["direction"]) == key]
    if not rows:
        return False
    nearest = min({e["threads"] for e in rows}, key=lambda t: abs(t - threads))
    rows = [e for e in rows if e["threads"] == nearest]
    best = min(rows, key=lambda e: abs(math.log(e["elements"] / max(numel, 1))))
    return best["torch_over_fastattn"] < ON_PAR


def torch_gated(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate) * up`` with torch's own eager ops, computed in float32 and rounded once to the
    inputs' dtype, as fastattn's kernels compute it (for fp32 inputs: ``act(gate) * up``, two
    ops). Differentiable through torch's autograd. ``gate``/``up``: one shape, fp32/bf16/fp16."""
    g = gate if gate.dtype == torch.float32 else gate.float()
    out = _ACT[activation](g) * up  # type promotion reads a 16-bit ``up`` as float32, no copy
    return out if out.dtype == gate.dtype else out.to(gate.dtype)

