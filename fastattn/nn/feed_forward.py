"""Feed-forward (MLP) modules backed by fastattn's fused kernels.

:class:`SwiGLU` is Llama's MLP, ``down_proj(silu(gate_proj(x)) * up_proj(x))``, with the
same parameter names, so a ``LlamaMLP`` state_dict loads unchanged. :class:`FeedForward`
is GPT-2's (and BERT's) MLP, ``c_proj(gelu(c_fc(x)))``, with GPT-2's parameter names.

Both run through the public ops, so ``with fastattn.backend(...)`` picks the kernels:
without biases :class:`SwiGLU` is one :func:`fastattn.feed_forward` call (the activation
fused into the first GEMM); :class:`FeedForward` is a matmul, the fused
:func:`fastattn.bias_gelu` and a linear.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastattn

__all__ = ["SwiGLU", "FeedForward"]

_GELU = {"gelu": "none", "gelu_tanh": "tanh", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# transformers' activation classes that are exactly one of those (QuickGELU is not).
_HF_ACTIVATIONS = {"GELUActivation": "gelu", "GELU": "gelu", "NewGELUActivation": "gelu_tanh",
                   "PytorchGELUTanh": "gelu_tanh", "FastGELUActivation": "gelu_tanh"}


class SwiGLU(nn.Module):
    """Llama's gated MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``.

    Args:
        dim: model width (input and output features).
        hidden_dim: intermediate size (Llama's ``intermediate_size``).
        bias: biases on the three projections (Llama's ``mlp_bias``); default False.
        device, dtype: as for :class:`torch.nn.Linear`.

    Parameters: ``gate_proj``, ``up_proj`` (``nn.Linear(dim, hidden_dim)``) and
    ``down_proj`` (``nn.Linear(hidden_dim, dim)``), named and shaped as in Hugging Face's
    ``LlamaMLP``: its state_dict loads with ``load_state_dict`` unchanged.

    Shapes: ``x`` ``(..., dim)`` -> ``(..., dim)``. Without biases the whole MLP is one
    :func:`fastattn.feed_forward` call (gate and up weights read in place, never
    concatenated; pre-activations never stored); with biases the projections are
    ``nn.Linear`` and the activation is :func:`fastattn.swiglu`.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.dim, self.hidden_dim = dim, hidden_dim
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias, **kw)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias, **kw)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias, **kw)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj.bias is None and self.up_proj.bias is None and self.down_proj.bias is None:
            return fastattn.feed_forward(x, (self.gate_proj.weight, self.up_proj.weight), self.down_proj.weight,
                                         "swiglu")
        return self.down_proj(fastattn.swiglu(self.gate_proj(x), self.up_proj(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, bias={self.gate_proj.bias is not None}"


class FeedForward(nn.Module):
    """GPT-2's MLP: ``dropout(c_proj(gelu(c_fc(x))))``, the GELU fused with ``c_fc``'s bias.

    Args:
        dim: model width.
        hidden_dim: intermediate size (GPT-2: ``4 * dim``).
        activation: ``"gelu"`` (exact erf, BERT and ``nn.GELU()``) or ``"gelu_tanh"``
            (GPT-2's ``gelu_new``; the names ``"gelu_new"`` and ``"gelu_pytorch_tanh"`` are
            accepted as aliases).
        bias: biases on both projections (GPT-2 has them); default True.
        dropout: dropout on the output in training mode (GPT-2's ``resid_pdrop``).
        device, dtype: as for :class:`torch.nn.Linear`.

    Parameter mapping. The names are GPT-2's ``GPT2MLP`` names, ``c_fc.weight``,
    ``c_fc.bias``, ``c_proj.weight``, ``c_proj.bias``, but ``c_fc`` and ``c_proj`` are
    :class:`torch.nn.Linear`, so their weights are ``(out, in)``: the transpose of
    GPT-2's ``Conv1D`` weights, which are ``(in, out)``. Biases are identical. Use
    :meth:`from_gpt2` to build one from a ``GPT2MLP`` (or any module with Conv1D
    ``c_fc``/``c_proj``), or :meth:`load_gpt2_state_dict` for its state_dict. A BERT
    MLP maps as ``intermediate.dense`` -> ``c_fc`` and ``output.dense`` -> ``c_proj``
    (both already ``nn.Linear``).

    Shapes: ``x`` ``(..., dim)`` -> ``(..., dim)``.
    """

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu", bias: bool = True,
                 dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        if activation not in _GELU:
            raise ValueError(f"activation must be one of {sorted(_GELU)}, got {activation!r}")
        kw = dict(device=device, dtype=dtype)
        self.dim, self.hidden_dim, self.activation = dim, hidden_dim, activation
        self.c_fc = nn.Linear(dim, hidden_dim, bias=bias, **kw)
        self.c_proj = nn.Linear(hidden_dim, dim, bias=bias, **kw)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(x, self.c_fc.weight)
        bias = self.c_fc.bias
        if bias is None:  # gelu(h + 0): the same fused kernel, with a zero bias
            bias = torch.zeros(self.hidden_dim, dtype=h.dtype, device=h.device)
        h = fastattn.bias_gelu(h, bias, _GELU[self.activation])
        return self.dropout(self.c_proj(h))

    @torch.no_grad()
    def load_gpt2_state_dict(self, state_dict: dict, strict: bool = True):
        """Load a ``GPT2MLP`` state_dict (Conv1D weights ``(in, out)``), transposing the weights."""
        converted = {k: (v.t() if k.endswith("weight") else v) for k, v in state_dict.items()}
        return self.load_state_dict(converted, strict=strict)

    @classmethod
    def from_gpt2(cls, mlp: nn.Module, activation: Optional[str] = None) -> "FeedForward":
        """A :class:`FeedForward` with the weights of GPT-2's ``GPT2MLP`` ``mlp`` (copied).

        ``activation`` defaults to the one ``mlp.act`` computes (``gelu_new``,
        ``gelu_pytorch_tanh``, ``gelu_fast`` -> ``"gelu_tanh"``; ``gelu`` -> ``"gelu"``); an
        activation that is no GELU (``quick_gelu``) is a ``ValueError``.
        """
        w_fc = mlp.c_fc.weight  # Conv1D: (dim, hidden)
        if activation is None:
            act = getattr(mlp, "act", None)
            name = type(act).__name__
            if act is not None and name not in _HF_ACTIVATIONS:
                raise ValueError(f"{name} is not a GELU fastattn fuses; pass activation= to override")
            activation = _HF_ACTIVATIONS.get(name, "gelu_tanh")
        dropout = getattr(getattr(mlp, "dropout", None), "p", 0.0)
        module = cls(w_fc.shape[0], w_fc.shape[1], activation, bias=mlp.c_fc.bias is not None, dropout=dropout,
                     device=w_fc.device, dtype=w_fc.dtype)
        module.load_gpt2_state_dict({k: v for k, v in mlp.state_dict().items() if k.startswith(("c_fc.", "c_proj."))})
        return module

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, activation={self.activation!r}"
