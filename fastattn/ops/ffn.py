"""Feed-forward core ops: gated activations, bias-GELU and the fused gated MLP,
as custom ops with fake implementations and autograd."""
from __future__ import annotations

import torch
from torch import Tensor

from fastattn import dispatch


def _impl(op: str, backend: str):
    return dispatch.implementation(op, backend).fn


def _new_like(t: Tensor) -> Tensor:
    """A contiguous tensor of ``t``'s shape, dtype and device: what the backends return."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _elementwise_op(op: str, schema: str, fake):
    """The custom op ``fastattn::<op>`` (``schema`` its arguments, the last one ``backend``) whose
    body runs the selected backend's implementation of core op ``op`` on the other arguments;
    ``fake`` gives its outputs' metadata to tracing. One definition for the four elementwise ops,
    whose bodies differ only in the op's name."""
    def body(*args):
        *inputs, backend = args
        return _impl(op, backend)(*inputs)

    custom = torch.library.custom_op(f"fastattn::{op}", body, mutates_args=(), schema=schema)
    custom.register_fake(fake)
    return custom


# ---------------------------------------------------------------- gated activations

_gated_act_fwd = _elementwise_op(
    "gated_act_fwd", "(Tensor gate, Tensor up, str activation, str backend) -> Tensor",
    lambda gate, up, activation, backend: _new_like(gate))
_gated_act_bwd = _elementwise_op(
    "gated_act_bwd", "(Tensor dout, Tensor gate, Tensor up, str activation, str backend) -> (Tensor, Tensor)",
    lambda dout, gate, up, activation, backend: (_new_like(gate), _new_like(up)))


def _gated_setup(ctx, inputs, output):
    gate, up, ctx.activation, ctx.backend = inputs
    ctx.save_for_backward(gate, up)


def _gated_backward(ctx, dout):
    gate, up = ctx.saved_tensors
    dgate, dup = _gated_act_bwd(dout.contiguous(), gate, up, ctx.activation, ctx.backend)
    return dgate, dup, None, None


_gated_act_fwd.register_autograd(_gated_backward, setup_context=_gated_setup)


def gated_activation(gate: Tensor, up: Tensor, activation: str, backend: str) -> Tensor:
    """Core op: ``act(gate) * up`` for activation "swiglu" | "geglu" | "geglu_tanh"."""
    return _gated_act_fwd(gate, up, activation, backend)


# ---------------------------------------------------------------- bias-GELU

_bias_gelu_fwd = _elementwise_op(
    "bias_gelu_fwd", "(Tensor x, Tensor bias, str approximate, str backend) -> Tensor",
    lambda x, bias, approximate, backend: _new_like(x))
_bias_gelu_bwd = _elementwise_op(
    "bias_gelu_bwd", "(Tensor dout, Tensor x, Tensor bias, str approximate, str backend) -> Tensor",
    lambda dout, x, bias, approximate, backend: _new_like(x))


def _bias_gelu_setup(ctx, inputs, output):
    x, bias, ctx.approximate, ctx.backend = inputs
    ctx.save_for_backward(x, bias)


def _bias_gelu_backward(ctx, dout):
    x, bias = ctx.saved_tensors
    dx = _bias_gelu_bwd(dout.contiguous(), x, bias, ctx.approximate, ctx.backend)
    dbias = dx.reshape(-1, dx.shape[-1]).sum(0, dtype=torch.float32).to(bias.dtype)
    return dx, dbias, None, None


_bias_gelu_fwd.register_autograd(_bias_gelu_backward, setup_context=_bias_gelu_setup)


def bias_gelu(x: Tensor, bias: Tensor, approximate: str, backend: str) -> Tensor:
    """Core op: ``gelu(x + bias)``."""
    return _bias_gelu_fwd(x, bias, approximate, backend)


# ---------------------------------------------------------------- fused gated MLP

RESIDUALS = ("none", "hidden", "gate_up")
"""What the feed-forward forward keeps for its backward (the op's ``residuals`` argument):

* ``"none"``: nothing, no backward follows; both residual outputs are empty (0 elements);
* ``"hidden"``: ``res_a = H = act(G) * U`` ``(..., hidden)``, ``res_b`` empty: the backward
  recomputes ``G = x @ w_gate.T`` and ``U = x @ w_up.T`` (the least memory, two more GEMMs);
* ``"gate_up"``: ``res_a = G``, ``res_b = U``, each ``(..., hidden)``: the backward reads them
  (and forms ``H`` from them elementwise), so it runs no GEMM the unfused MLP does not.

A backend keeps what its forward function's ``residuals`` attribute names when a gradient is
needed (``"hidden"`` where it names none); see :func:`training_residuals`."""


def training_residuals(backend: str) -> str:
    """The residuals ``backend``'s feed-forward keeps when a gradient will be taken: the
    ``residuals`` attribute of its ``feed_forward_fwd`` implementation, else ``"hidden"``."""
    return getattr(dispatch.implementation("feed_forward_fwd", backend).fn, "residuals", "hidden")


def _residual_shapes(x: Tensor, hidden: int, residuals: str) -> tuple[tuple, tuple]:
    full, empty = (*x.shape[:-1], hidden), (0,)
    if residuals == "gate_up":
        return full, full
    if residuals == "hidden":
        return full, empty
    return empty, empty


@torch.library.custom_op("fastattn::feed_forward_fwd", mutates_args=())
def _feed_forward_fwd(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, activation: str, residuals: str,
                      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("feed_forward_fwd", backend)(x, w_gate, w_up, w_down, activation, residuals)


@_feed_forward_fwd.register_fake
def _(x, w_gate, w_up, w_down, activation, residuals, backend):
    out = x.new_empty(*x.shape[:-1], w_down.shape[0])
    shape_a, shape_b = _residual_shapes(x, w_gate.shape[0], residuals)
    return out, x.new_empty(shape_a), x.new_empty(shape_b)


@torch.library.custom_op("fastattn::feed_forward_bwd", mutates_args=())
def _feed_forward_bwd(dout: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, res_a: Tensor,
                      res_b: Tensor, activation: str, residuals: str,
                      backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _impl("feed_forward_bwd", backend)(dout, x, w_gate, w_up, w_down, res_a, res_b, activation, residuals)


@_feed_forward_bwd.register_fake
def _(dout, x, w_gate, w_up, w_down, res_a, res_b, activation, residuals, backend):
    return tuple(_new_like(t) for t in (x, w_gate, w_up, w_down))


def _ff_setup(ctx, inputs, output):
    x, w_gate, w_up, w_down, ctx.activation, ctx.residuals, ctx.backend = inputs
    ctx.save_for_backward(x, w_gate, w_up, w_down, output[1], output[2])
    # The residuals are no function to differentiate, and their gradients are not materialised:
    # autograd would otherwise hand the backward a zero-filled (tokens, hidden) tensor for each.
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _ff_backward(ctx, dout, dres_a, dres_b):
    if dout is None:  # the output did not reach the loss (grads are not materialised)
        return (None,) * 7
    if ctx.residuals == "none":
        raise RuntimeError("fastattn::feed_forward_fwd ran with residuals='none' (no backward expected); "
                           "call it with the backend's training_residuals to differentiate it")
    x, w_gate, w_up, w_down, res_a, res_b = ctx.saved_tensors
    grads = _feed_forward_bwd(dout.contiguous(), x, w_gate, w_up, w_down, res_a, res_b, ctx.activation,
                              ctx.residuals, ctx.backend)
    return (*grads, None, None, None)


_feed_forward_fwd.register_autograd(_ff_backward, setup_context=_ff_setup)


def feed_forward(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, activation: str, backend: str) -> Tensor:
    """Core op: ``down(act(x @ w_gate.T) * (x @ w_up.T))``; returns the output only. Keeps the
    backend's :func:`training_residuals` when a gradient will be taken, else nothing."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w_gate.requires_grad or w_up.requires_grad
                                              or w_down.requires_grad)
    residuals = training_residuals(backend) if needs_grad else "none"
    return _feed_forward_fwd(x, w_gate, w_up, w_down, activation, residuals, backend)[0]
