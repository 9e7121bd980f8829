"""Where ``auto`` runs ``feed_forward`` and ``bias_gelu`` on the CPU: fastattn's native route or
torch's own eager ops.

``auto`` must never pick a fastattn CPU kernel where torch is faster. Below some size a call's
fixed cost (the native route's plumbing, the custom op's dispatch and autograd node) outweighs
what fusing saves, so each op has a measured size floor: ``ffn_crossover.json`` next to
this file, written by ``python benchmarks/bench_cpu_ffn_crossover.py --write``, holds for each
(op, dtype, forward or forward+backward, thread count, size) the ratio of the time of the torch
route below (what ``auto`` runs instead) to the time of the native route, measured side by
side in one process on the machine it names, and the floor :func:`floors` derives from them:
the smallest measured size from which every larger measured size ran the native route at
least on par (a ratio of at least :data:`ON_PAR`). :func:`prefer_torch` says whether a call
lies below the floor of its (op, dtype, direction) at the nearest measured thread count. The
size is ``tokens * hidden * (2 dim + dim_out)`` for ``feed_forward`` (multiply-adds of the
forward) and the element count for ``bias_gelu``. A dtype with no entry keeps the native route.

The torch routes compute what the native kernels compute: the activation in float32 from the
pre-activations rounded to the inputs' dtype, rounded once (``feed_forward``); ``gelu`` of
``x + bias`` formed in float32, rounded once (``bias_gelu``). Both differentiate through torch's
autograd.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastattn.backends.cpu.activation_crossover import torch_gated
from fastattn.backends.cpu.measured_table import MeasuredTable

TABLE = MeasuredTable("ffn_crossover.json")


def measures(op: str, fn) -> bool:
    """Whether ``fn`` (the ``cpu`` backend's ``feed_forward_fwd`` or ``bias_gelu_fwd``, as ``op``
    names) is the native route the table measured: a stand-in registered in its place
    (``dispatch.register``) keeps ``auto``'s choice."""
    # By name: importing the backend module here would tie this leaf to the extension's package.
    return getattr(fn, "__module__", None) == "fastattn.backends.cpu.ffn" and fn.__name__ == f"{op}_fwd"


def feed_forward_size(tokens: int, dim: int, hidden: int, dim_out: int) -> int:
    """The size a ``feed_forward`` call is looked up by: the multiply-adds of its forward."""
    return tokens * hidden * (2 * dim + dim_out)


ON_PAR = 0.9
"""A ratio (torch's time over fastattn's) of at least this counts as on par when the floor is
derived: at large sizes both routes run the same GEMMs, and on a shared machine their measured
times differ by up to this much either way; the native route is kept there for its memory."""


def floors(entries) -> dict[tuple[str, str, str, int], int]:
    """The size floor of each (op, dtype, direction, threads) of ``entries``: the smallest
    measured size from which every larger measured size has a ratio of at least ``ON_PAR``
    (the largest measured size when even that one does not); calls below it run torch."""
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["op"], e["dtype"], e["direction"], e["threads"]), []).append(e)
    out = {}
    for key, rows in groups.items():
        rows = sorted(rows, key=lambda e: e["size"])
        floor = rows[-1]["size"]
        for e in reversed(rows):
            if e["torch_over_fastattn"] < ON_PAR:
                break
            floor = e["size"]
        out[key] = floor
    return out


@functools.lru_cache(maxsize=1)
def _floors() -> dict[tuple[str, str, str, int], int]:
    return floors(TABLE.entries())


def prefer_torch(op: str, dtype: torch.dtype, size: int, grad: bool) -> bool:
    """Whether a call of ``op`` ("feed_forward" or "bias_gelu") of ``size`` (:func:`feed_forward_size`,
    or elements) in ``dtype`` (``grad``: forward and backward, else the forward alone) lies below
    the measured floor at the thread count nearest ``torch.get_num_threads()``. No measurement:
    the native route."""
    return _prefer_torch(op, str(dtype).replace("torch.", ""), "fwd+bwd" if grad else "fwd",
                         torch.get_num_threads(), size)


@functools.lru_cache(maxsize=4096)
def _prefer_torch(op: str, dtype: str, direction: str, threads: int, size: int) -> bool:
    measured = {k[3]: v for k, v in _floors().items() if k[:3] == (op, dtype, direction)}
    if not measured:
        return False
    return size < measured[min(measured, key=lambda t: abs(t - threads))]


def torch_feed_forward(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                       activation: str) -> torch.Tensor:
    """``(act(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T`` in torch's eager ops: the GEMMs in the
    inputs' dtype, the gated activation in float32 rounded once (for fp32 inputs: the unfused
    Llama MLP). Shapes as :func:`fastattn.feed_forward` with the pair ``(w_gate, w_up)``."""
    return F.linear(torch_gated(F.linear(x, w_gate), F.linear(x, w_up), activation), w_down)


def torch_bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """``gelu(x + bias, approximate)`` in torch's eager ops, the sum formed in float32 and the
    result rounded once to ``x``'s dtype (for fp32 inputs: ``F.gelu(x + bias)``)."""
    s = x + bias if x.dtype == torch.float32 else x.float() + bias
    out = F.gelu(s, approximate=approximate)
    return out if out.dtype == x.dtype else out.to(x.dtype)

