"""Public feed-forward functions: fused gated activations, bias-GELU and the
fused gated MLP."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.ops import ffn as core


def _pick(ops, backend, device, *args) -> str:
    backend = dispatch.check_backend_name(backend) if backend is not None else None
    return dispatch.select(ops, backend, device, *args)


def _grad_ops(name: str, *tensors) -> tuple[str, ...]:
    needs = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (f"{name}_fwd", f"{name}_bwd") if needs else (f"{name}_fwd",)


def _check_gate_up(gate, up):
    check.tensor("gate", gate, min_ndim=1)
    check.tensor("up", up, min_ndim=1)
    check.same_dtype(("gate", "up"), gate, up)
    check.same_device(("gate", "up"), gate, up)
    if gate.shape != up.shape:
        raise ValueError(f"up must have gate's shape {tuple(gate.shape)}, got {tuple(up.shape)}")


def swiglu(gate: Tensor, up: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Fused ``silu(gate) * up`` (Llama's MLP activation), forward and backward.

    ``gate``, ``up``: the same shape ``(..., hidden)``, fp16/bf16/fp32 (computed in fp32).
    Returns that shape and dtype. The backward recomputes ``silu(gate)`` instead of saving it.
    """
    _check_gate_up(gate, up)
    name = _pick(_grad_ops("gated_act", gate, up), backend, gate.device, gate, up, "swiglu")
    return core.gated_activation(gate, up, "swiglu", name)


def geglu(gate: Tensor, up: Tensor, approximate: str = "none", *, backend: Optional[str] = None) -> Tensor:
    """Fused ``gelu(gate, approximate) * up`` (GEGLU), forward and backward.

    ``gate``, ``up``: the same shape ``(..., hidden)``, fp16/bf16/fp32 (computed in fp32);
    ``approximate`` as in :func:`torch.nn.functional.gelu`: ``"none"`` (exact erf) or ``"tanh"``.
    Returns that shape and dtype.
    """
    _check_gate_up(gate, up)
    approximate = check.choice("approximate", approximate, check.GELU_APPROXIMATIONS)
    activation = "geglu" if approximate == "none" else "geglu_tanh"
    name = _pick(_grad_ops("gated_act", gate, up), backend, gate.device, gate, up, activation)
    return core.gated_activation(gate, up, activation, name)


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
    name = _pick(_grad_ops("bias_gelu", x, bias), backend, x.device, x, bias, approximate)
    return core.bias_gelu(x, bias, approximate, name)


def feed_forward(x: Tensor, w_gate_up: Union[Tensor, Sequence[Tensor]], w_down: Tensor,
                 activation: str = "swiglu", *, backend: Optional[str] = None) -> Tensor:
    """The gated MLP ``(act(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T`` with the activation
    fused into the first GEMM's epilogue (the pre-activations are never written in forward).

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
    name = _pick(_grad_ops("feed_forward", x, w_gate, w_up, w_down), backend, x.device,
                 x, w_gate, w_up, w_down, activation)
    return core.feed_forward(x, w_gate, w_up, w_down, activation, name)
