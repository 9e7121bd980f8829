"""Public feed-forward functions: bias-GELU and the fused gated MLP (the gated activations
``swiglu``/``geglu`` are in :mod:`fastattn.functional.activations`, re-exported here).

The route of one call, after its checks and the backend choice (:func:`fastattn.dispatch.select`):

* ``auto`` on CPU tensors whose choice is the ``cpu`` backend: where the measured table
  (:mod:`fastattn.backends.cpu.ffn_crossover`) says torch's own eager ops are faster at this
  size (a small call costs more in fixed overhead than fusing saves), those ops run instead;
* no gradient needed and no tracer watching (:func:`fastattn.ops.eager.runs_eagerly`): the
  chosen backend's forward directly, without torch.library's dispatch of the custom op;
* otherwise the custom op (:mod:`fastattn.ops.ffn`), with its autograd formula and the fake
  implementation that tracers need.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.backends.cpu import ffn_crossover as crossover
from fastattn.functional.activations import geglu, swiglu  # noqa: F401  (re-exported)
from fastattn.ops import ffn as core
from fastattn.ops.eager import runs_eagerly


def _pick(ops, backend, device, *args) -> str:
    backend = dispatch.check_backend_name(backend) if backend is not None else None
    return dispatch.select(ops, backend, device, *args)


def _grad_ops(name: str, *tensors) -> tuple[str, ...]:
    needs = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (f"{name}_fwd", f"{name}_bwd") if needs else (f"{name}_fwd",)


def _torch_is_faster(op: str, name: str, backend: Optional[str], dtype: torch.dtype, size: int, grad: bool) -> bool:
    """Whether ``auto`` runs torch's own ops for this call of ``op`` (backend ``name`` chosen):
    ``auto`` chose the ``cpu`` backend's native route and the measured table prefers torch at
    this size. Eager calls only (a traced call keeps the op the tracer sees)."""
    if name != "cpu" or (backend or dispatch.current_backend()) != "auto" or torch.compiler.is_compiling():
        return False
    return (crossover.measures(op, dispatch.implementation(f"{op}_fwd", name).fn)
            and crossover.prefer_torch(op, dtype, size, grad))


def bias_gelu(x: Tensor, bias: Tensor, approximate: str = "none", *, backend: Optional[str] = None) -> Tensor:
    """Fused ``gelu(x + bias, approximate)`` (BERT/GPT-2 MLP), forward and backward.

    ``x`` ``(..., hidden)``; ``bias`` ``(hidden,)``; ``approximate`` ``"none"`` (erf) or ``"tanh"``
    (GPT-2's ``gelu_new``). Returns ``x``'s shape and dtype; gradients reach ``x`` and ``bias``.
    """
    check.tensor("x", x, min_ndim=1)
    check.tensor("bias", bias, ndim=1)
    check.same_dtype(("x", "bias"), x, bias)
    check.same_device(("x", "bias"), x, bias)
    check.dim_equal("bias", "a length of", bias.shape[0], x.shape[-1], "x's last dim")
    approximate = check.choice("approximate", approximate, check.GELU_APPROXIMATIONS)
    ops = _grad_ops("bias_gelu", x, bias)
    name = _pick(ops, backend, x.device, x, bias, approximate)
    if _torch_is_faster("bias_gelu", name, backend, x.dtype, x.numel(), len(ops) == 2):
        return crossover.torch_bias_gelu(x, bias, approximate)
    if len(ops) == 1 and runs_eagerly(x, bias):
        return dispatch.implementation("bias_gelu_fwd", name).fn(x, bias, approximate)
    return core.bias_gelu(x, bias, approximate, name)


def feed_forward(x: Tensor, w_gate_up: Union[Tensor, Sequence[Tensor]], w_down: Tensor,
                 activation: str = "swiglu", *, backend: Optional[str] = None) -> Tensor:
    """The gated MLP ``(act(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T`` with the activation
    fused: into the first GEMM's epilogue on Triton (the pre-activations never written; the
    backward recomputes them), into one pass over the GEMM outputs on the CPU (which keeps the
    pre-activations when a gradient is needed, so its backward recomputes no GEMM). Below a
    measured size, ``auto`` on CPU tensors runs torch's own ops instead (see the module).

    Args:
        x: ``(..., dim)``.
        w_gate_up: ``(2 * hidden, dim)`` with the gate rows first (Phi-3's ``gate_up_proj``),
            or a pair ``(w_gate, w_up)`` of ``(hidden, dim)`` (Llama's; no concatenated copy is made).
        w_down: ``(dim_out, hidden)`` (``nn.Linear`` layout).
        activation: ``"swiglu"``, ``"geglu"`` (erf) or ``"geglu_tanh"``.

    Returns:
        ``(..., dim_out)``. Gradients reach ``x`` and every weight.
    """
    check.tensor("x", x, min_ndim=1)
    if isinstance(w_gate_up, (tuple, list)):
        if len(w_gate_up) != 2:
            raise ValueError(f"w_gate_up as a sequence must be a pair (w_gate, w_up), got {len(w_gate_up)} items")
        w_gate, w_up = w_gate_up
        check.tensor("w_gate_up[0]", w_gate, ndim=2)
        check.tensor("w_gate_up[1]", w_up, ndim=2)
        if w_gate.shape != w_up.shape:
            raise ValueError(f"w_gate_up[1] must have w_gate_up[0]'s shape {tuple(w_gate.shape)}, got {tuple(w_up.shape)}")
    else:
        check.tensor("w_gate_up", w_gate_up, ndim=2)
        if w_gate_up.shape[0] % 2:
            raise ValueError(f"w_gate_up must be (2 * hidden, dim) with gate rows first, got {tuple(w_gate_up.shape)}")
        w_gate, w_up = w_gate_up.chunk(2, dim=0)  # views, no copy
    check.tensor("w_down", w_down, ndim=2)
    check.same_dtype(("x", "w_gate_up", "w_gate_up", "w_down"), x, w_gate, w_up, w_down)
    check.same_device(("x", "w_gate_up", "w_gate_up", "w_down"), x, w_gate, w_up, w_down)
    check.dim_equal("w_gate_up", "an input dim of", w_gate.shape[1], x.shape[-1], "x's last dim")
    check.dim_equal("w_down", "an input dim (dim 1) of", w_down.shape[1], w_gate.shape[0], "the hidden size")
    activation = check.choice("activation", activation, check.ACTIVATIONS)
    ops = _grad_ops("feed_forward", x, w_gate, w_up, w_down)
    name = _pick(ops, backend, x.device, x, w_gate, w_up, w_down, activation)
    size = crossover.feed_forward_size(math.prod(x.shape[:-1]), x.shape[-1], w_gate.shape[0], w_down.shape[0])
    if _torch_is_faster("feed_forward", name, backend, x.dtype, size, len(ops) == 2):
        return crossover.torch_feed_forward(x, w_gate, w_up, w_down, activation)
    if len(ops) == 1 and runs_eagerly(x, w_gate, w_up, w_down):
        return dispatch.implementation("feed_forward_fwd", name).fn(x, w_gate, w_up, w_down, activation, "none")[0]
    return core.feed_forward(x, w_gate, w_up, w_down, activation, name)
