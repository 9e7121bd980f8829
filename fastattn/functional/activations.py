"""Public gated activations: fused SwiGLU and GEGLU, forward and backward.

A plain eager call on CPU tensors takes a short route (:func:`_short_route`: cheap tests in place
of the full checks and the backend choice, which it leaves to the full path whenever a test
fails). The route of one call, after its checks and the backend choice
(:func:`fastattn.dispatch.select`):

* ``auto`` on CPU tensors whose choice is fastattn's native kernel: where the measured table
  (:mod:`fastattn.backends.cpu.activation_crossover`) says torch's own eager ops are faster at
  this size (a call of a few thousand elements, as a model's decoding step makes, costs more
  in a kernel launch than in its arithmetic), those ops run instead;
* no gradient needed and no tracer watching (:func:`fastattn.ops.eager.runs_eagerly`): the
  chosen backend's forward directly, without torch.library's dispatch of the custom op, whose
  tens of microseconds outweigh a small call's work;
* otherwise the custom op (:mod:`fastattn.ops.ffn`), with its autograd formula and the fake
  implementation that tracers need.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.backends.cpu import activation_crossover as crossover
from fastattn.ops import ffn as core
from fastattn.ops.eager import runs_eagerly


_Tensor = torch.Tensor
_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_gate_up(gate, up):
    check.tensor("gate", gate, min_ndim=1)
    check.tensor("up", up, min_ndim=1)
    check.same_dtype(("gate", "up"), gate, up)
    check.same_device(("gate", "up"), gate, up)
    if gate.shape != up.shape:
        raise ValueError(f"up must have gate's shape {tuple(gate.shape)}, got {tuple(up.shape)}")


def _gated(gate: Tensor, up: Tensor, activation: str, backend: Optional[str]) -> Tensor:
    """``act(gate) * up`` on the backend ``backend`` names (``None``: the ``fastattn.backend``
    block's, else ``auto``), by the route of the module docstring. Arguments validated."""
    requested = dispatch.check_backend_name(backend) if backend is not None else None
    needs_grad = torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)
    ops = ("gated_act_fwd", "gated_act_bwd") if needs_grad else ("gated_act_fwd",)
    name = dispatch.select(ops, requested, gate.device, gate, up, activation)
    impl = dispatch.implementation("gated_act_fwd", name)
    if name == "cpu" and (requested or dispatch.current_backend()) == "auto" and not torch.compiler.is_compiling():
        if crossover.measures(impl.fn) and crossover.prefer_torch(activation, gate.dtype, gate.numel(), needs_grad):
            return crossover.torch_gated(gate, up, activation)
    if not needs_grad and runs_eagerly(gate, up):
        return impl.fn(gate, up, activation)
    return core.gated_activation(gate, up, activation, name)


def _short_route(gate, up, activation: str, backend) -> Optional[Tensor]:
    """The route of a plain eager call on CPU tensors, decided by cheap tests, or ``None`` (then
    the full checks and :func:`_gated` run). It takes the call only when its tests prove what
    the full path would check and choose: plain CPU tensors of one native dtype and shape (so
    the arguments are valid and the ``cpu`` backend supports them), ``auto`` or ``cpu``, the
    native kernel in the registry, nothing tracing. Then it runs what :func:`_gated` would run:
    torch's ops where the table prefers them, else (no gradient needed) the kernel directly."""
    if torch.compiler.is_compiling() or type(gate) is not _Tensor or type(up) is not _Tensor:
        return None
    dtype, shape = gate.dtype, gate.shape
    if (dtype not in _NATIVE_DTYPES or up.dtype is not dtype or len(shape) == 0 or up.shape != shape
            or not (gate.is_cpu and up.is_cpu and gate.is_contiguous() and up.is_contiguous())):
        return None
    if backend is None:
        backend = dispatch.current_backend()
    if (backend != "auto" and backend != "cpu") or torch._C._len_torch_dispatch_stack() != 0:
        return None
    impl = dispatch.available_implementation("gated_act_fwd", "cpu", "cpu")
    if impl is None or not crossover.measures(impl.fn):  # none here, or a stand-in: the full path decides
        return None
    fn = impl.fn
    needs_grad = torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)
    if backend == "auto" and crossover.prefer_torch(activation, dtype, gate.numel(), needs_grad):
        return crossover.torch_gated(gate, up, activation)
    return None if needs_grad else fn(gate, up, activation)


def swiglu(gate: Tensor, up: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Fused ``silu(gate) * up`` (Llama's MLP activation), forward and backward.

    ``gate``, ``up``: the same shape ``(..., hidden)``, fp16/bf16/fp32 (computed in fp32).
    Returns that shape and dtype. The backward recomputes ``silu(gate)`` instead of saving it.
    """
    out = _short_route(gate, up, "swiglu", backend)
    if out is not None:
        return out
    _check_gate_up(gate, up)
    return _gated(gate, up, "swiglu", backend)


def geglu(gate: Tensor, up: Tensor, approximate: str = "none", *, backend: Optional[str] = None) -> Tensor:
    """Fused ``gelu(gate, approximate) * up`` (GEGLU), forward and backward.

    ``gate``, ``up``: the same shape ``(..., hidden)``, fp16/bf16/fp32 (computed in fp32);
    ``approximate`` as in :func:`torch.nn.functional.gelu`: ``"none"`` (exact erf) or ``"tanh"``.
    Returns that shape and dtype.
    """
    if type(approximate) is str and approximate in check.GELU_APPROXIMATIONS:
        out = _short_route(gate, up, "geglu" if approximate == "none" else "geglu_tanh", backend)
        if out is not None:
            return out
    _check_gate_up(gate, up)
    approximate = check.choice("approximate", approximate, check.GELU_APPROXIMATIONS)
    return _gated(gate, up, "geglu" if approximate == "none" else "geglu_tanh", backend)
