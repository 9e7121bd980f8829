"""How a module is swapped in place: by changing its class, never its parameters.

A swapped module keeps its identity, children, parameters, buffers and hooks; only
``forward`` changes. Its class becomes a subclass of its original class that puts one of
the mixins below first in the MRO (created once per original class and option set), or,
for ``torch.nn.MultiheadAttention``, :class:`fastattn.nn.MultiheadAttention`. The
original class is remembered in the instance's ``_fastattn_saved`` record, which
:func:`restore` reads back. Swapped modules pickle and deep-copy (as their original class
plus the mixin).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

import fastattn

SAVED = "_fastattn_saved"
"""Instance attribute holding what a swap changed: ``{"__class__": original class, attr: old value}``."""


def saved(module: nn.Module) -> Optional[dict]:
    """The undo record of a swapped module, or ``None`` if fastattn never swapped it."""
    return module.__dict__.get(SAVED)


def record(module: nn.Module, **changes: Any) -> None:
    """Remember the pre-swap values of ``changes`` (the first record of a name wins)."""
    undo = module.__dict__.setdefault(SAVED, {})
    for name, value in changes.items():
        undo.setdefault(name, value)


def restore(module: nn.Module) -> None:
    """Undo every change :func:`record` remembered on ``module``."""
    _set_all(module, module.__dict__.pop(SAVED, None) or {})


def _set_all(module: nn.Module, values: dict) -> None:
    """Set each recorded attribute (the class, a transformers attention implementation, or a
    plain attribute) of ``module`` to the given value."""
    for name, value in values.items():
        if name == "__class__":
            module.__class__ = value
        elif name == "attn_implementation":
            module.set_attn_implementation(value)
        else:
            setattr(module, name, value)


# ----------------------------------------------------------------------------- dynamic subclasses

_SUBCLASSES: dict[tuple, type] = {}


def swapped_class(mixin: type, original: type, **options: Any) -> type:
    """The class ``(mixin, original)`` with ``options`` as class attributes (cached)."""
    key = (mixin, original, tuple(sorted(options.items())))
    cls = _SUBCLASSES.get(key)
    if cls is None:
        attrs = {f"_fastattn_{k}": v for k, v in options.items()}
        attrs.update(_fastattn_mixin=mixin, _fastattn_options=dict(options), __module__=mixin.__module__,
                     __qualname__=f"Fastattn{original.__qualname__}")
        cls = type(f"Fastattn{original.__name__}", (mixin, original), attrs)
        _SUBCLASSES[key] = cls
    return cls


def swap_class(module: nn.Module, new_class: type) -> None:
    """Change ``module``'s class in place, remembering the original."""
    record(module, __class__=type(module))
    module.__class__ = new_class


def _rebuild(mixin: type, original: type, options: dict) -> nn.Module:
    obj = original.__new__(original)
    obj.__class__ = swapped_class(mixin, original, **options)
    return obj


class Swapped:
    """Base of every mixin: pickling and deep copies name the original class, not the
    dynamic one (which exists only in this process)."""

    def __reduce_ex__(self, protocol):
        cls = type(self)
        original = next(c for c in cls.__mro__[1:] if c not in cls._fastattn_mixin.__mro__)
        reduced = object.__reduce_ex__(self, max(protocol, 2))
        return (_rebuild, (cls._fastattn_mixin, original, cls._fastattn_options), *reduced[2:])


# ----------------------------------------------------------------------------- activations

_ERF_GELU = ("GELUActivation",)
_TANH_GELU = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")
_SILU = ("SiLUActivation", "SiLU")


def activation_kind(act) -> Optional[str]:
    """What a model's activation module/function computes, as fastattn names it:
    ``"silu"``, ``"gelu"`` (exact erf) or ``"gelu_tanh"``; ``None`` if fastattn has no fused
    form of it (e.g. ReLU, quick-GELU, clipped GELU)."""
    if act is F.silu or isinstance(act, nn.SiLU):
        return "silu"
    if act is F.gelu:
        return "gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    name = type(act).__name__
    if name in _SILU:
        return "silu"
    if name in _TANH_GELU:
        return "gelu_tanh"
    if name in _ERF_GELU:
        # transformers' "gelu" and "gelu_python" are both the exact erf GELU.
        return "gelu"
    return None


def _gelu_approximate(kind: str) -> str:
    return "tanh" if kind == "gelu_tanh" else "none"


# ----------------------------------------------------------------------------- MLP mixins


class GatedMLP(Swapped):
    """Llama-style ``down_proj(act(gate_proj(x)) * up_proj(x))`` with the activation and the
    product fused (:func:`fastattn.swiglu` / :func:`fastattn.geglu`)."""

    _fastattn_kind: str

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self._fastattn_kind == "silu":
            hidden = fastattn.swiglu(gate, up)
        else:
            hidden = fastattn.geglu(gate, up, approximate=_gelu_approximate(self._fastattn_kind))
        return self.down_proj(hidden)


class Conv1DGeluMLP(Swapped):
    """GPT-2's ``c_proj(act(c_fc(x)))`` (transformers ``Conv1D``: ``x @ W + b``) with the
    bias add fused into the GELU (:func:`fastattn.bias_gelu`)."""

    _fastattn_kind: str

    def forward(self, hidden_states):
        h = torch.matmul(hidden_states, self.c_fc.weight)  # Conv1D weight is (in, out): no transpose
        h = fastattn.bias_gelu(h, self.c_fc.bias, approximate=_gelu_approximate(self._fastattn_kind))
        return self.dropout(self.c_proj(h))


def _linear_bias_gelu(x, linear: nn.Linear, kind: str):
    # The GEMM without its bias; the bias add rides in the fused GELU.
    return fastattn.bias_gelu(F.linear(x, linear.weight), linear.bias, approximate=_gelu_approximate(kind))


class LinearGeluIntermediate(Swapped):
    """BERT's intermediate block ``act(dense(x))`` with a fused bias-GELU."""

    _fastattn_kind: str

    def forward(self, hidden_states):
        return _linear_bias_gelu(hidden_states, self.dense, self._fastattn_kind)


class NeoXGeluMLP(Swapped):
    """GPT-NeoX's ``dense_4h_to_h(act(dense_h_to_4h(x)))`` with a fused bias-GELU."""

    _fastattn_kind: str

    def forward(self, hidden_states):
        return self.dense_4h_to_h(_linear_bias_gelu(hidden_states, self.dense_h_to_4h, self._fastattn_kind))


# ----------------------------------------------------------------------------- torch encoder layer


class EncoderLayerNoFastPath(Swapped):
    """``nn.TransformerEncoderLayer`` without torch's fused inference fast path.

    In eval mode without gradients torch's ``forward`` calls one fused native op and never
    runs ``self_attn.forward``, so a swapped attention would be silently bypassed. This
    ``forward`` is torch's own non-fast path (same math, same submodule calls), so the
    layer's ``self_attn`` (a :class:`fastattn.nn.MultiheadAttention`) always runs.
    """

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


# ----------------------------------------------------------------------------- suspend / resume


def _current(module: nn.Module, name: str) -> Any:
    if name == "__class__":
        return type(module)
    if name == "attn_implementation":
        return module.config._attn_implementation
    return getattr(module, name)


def suspend(model: nn.Module) -> list[tuple[nn.Module, dict, dict]]:
    """Restore every swapped module of ``model`` to its original state, returning what
    :func:`resume` needs to put the swaps back exactly."""
    state = []
    for module in model.modules():
        undo = saved(module)
        if undo is not None:
            state.append((module, dict(undo), {name: _current(module, name) for name in undo}))
            restore(module)
    return state


def resume(state: list[tuple[nn.Module, dict, dict]]) -> None:
    """Re-apply the swaps :func:`suspend` took off."""
    for module, undo, current in state:
        _set_all(module, current)
        module.__dict__[SAVED] = undo
