"""The swap registry: one table of model families and how fastattn swaps their attention
and their MLP. :func:`fastattn.patch` walks a model's module tree against this table;
adding a family is adding an entry here, not writing a function.

* ``TORCH_MODULES``: ``torch.nn`` modules, by exact class.
* ``HF_FAMILIES``: Hugging Face transformers families, by ``config.model_type``. Attention
  is swapped for the whole model through transformers' attention-function registry
  (``model.set_attn_implementation("fastattn")``, see
  :mod:`fastattn.integrations.transformers`); ``attention_classes`` only name the layers
  that route through it (for the report and per-module verification). MLP blocks are
  swapped per module, by class name, with the mixin of :data:`MLP_SWAPS` that matches their
  layout; the fused activation is read from the module itself (its ``act_fn``/``act``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from fastattn.patching import swaps


@dataclass(frozen=True)
class MLPSwap:
    """How to fuse one MLP layout: the mixin, the activation attribute it reads, the fused
    activations it accepts, and the submodules it calls by weight (which must be exactly
    ``nn.Linear``/``Conv1D`` with a bias, since the fused op bypasses their ``forward``)."""

    mixin: type
    activation_attr: str
    kinds: tuple[str, ...]
    replacement: str
    by_weight: tuple[str, ...] = ()
    weight_types: tuple[str, ...] = ("Linear",)


@dataclass(frozen=True)
class Family:
    """One model family: which ``config.model_type`` values it covers, which attention classes
    route through the attention interface, and ``{MLP class name: MLP layout}``."""

    model_types: tuple[str, ...]
    attention_classes: tuple[str, ...]
    mlp_classes: dict[str, str] = field(default_factory=dict)


MLP_SWAPS: dict[str, MLPSwap] = {
    "gated": MLPSwap(swaps.GatedMLP, "act_fn", ("silu", "gelu", "gelu_tanh"), "gated MLP, act(gate) * up fused"),
    "gpt2": MLPSwap(swaps.Conv1DGeluMLP, "act", ("gelu", "gelu_tanh"), "c_fc bias + GELU fused",
                    by_weight=("c_fc",), weight_types=("Conv1D",)),
    "bert_intermediate": MLPSwap(swaps.LinearGeluIntermediate, "intermediate_act_fn", ("gelu", "gelu_tanh"),
                                 "dense bias + GELU fused", by_weight=("dense",)),
    "neox": MLPSwap(swaps.NeoXGeluMLP, "act", ("gelu", "gelu_tanh"), "dense_h_to_4h bias + GELU fused",
                    by_weight=("dense_h_to_4h",)),
}

HF_FAMILIES: dict[str, Family] = {
    "llama": Family(("llama",), ("LlamaAttention",), {"LlamaMLP": "gated"}),
    "mistral": Family(("mistral",), ("MistralAttention",), {"MistralMLP": "gated"}),
    "qwen2": Family(("qwen2",), ("Qwen2Attention",), {"Qwen2MLP": "gated"}),
    "gemma": Family(("gemma", "gemma2", "gemma3_text"), ("GemmaAttention", "Gemma2Attention", "Gemma3Attention"),
                    {"GemmaMLP": "gated", "Gemma2MLP": "gated", "Gemma3MLP": "gated"}),
    "gpt2": Family(("gpt2",), ("GPT2Attention",), {"GPT2MLP": "gpt2"}),
    "gpt_neox": Family(("gpt_neox",), ("GPTNeoXAttention",), {"GPTNeoXMLP": "neox"}),
    "bert": Family(("bert",), ("BertSelfAttention", "BertCrossAttention"), {"BertIntermediate": "bert_intermediate"}),
}


@dataclass(frozen=True)
class TorchSwap:
    """A ``torch.nn`` module swap: ``target(module)`` gives the new class (or ``None`` when the
    swap only sets attributes), ``attributes`` are set (and restored by unpatch), ``needs``
    says when it applies (``"attention"``/``"ffn"``), ``when`` an extra precondition."""

    needs: str
    replacement: str
    target: Optional[Callable[[nn.Module], type]] = None
    attributes: dict = field(default_factory=dict)
    when: Optional[Callable[[nn.Module], Optional[str]]] = None


def _mha_class(module: nn.Module) -> type:
    from fastattn.nn import MultiheadAttention

    return MultiheadAttention


def _self_attn_swapped(layer: nn.Module) -> Optional[str]:
    from fastattn.nn import MultiheadAttention

    if not isinstance(layer.self_attn, MultiheadAttention):
        return "its self_attn is not a fastattn MultiheadAttention"
    return None


def _has_swapped_encoder_layer(encoder: nn.Module) -> Optional[str]:
    if any(isinstance(layer, swaps.EncoderLayerNoFastPath) for layer in encoder.layers):
        return None
    return "no layer of it was swapped"


TORCH_MODULES: dict[type, TorchSwap] = {
    nn.MultiheadAttention: TorchSwap("attention", "fastattn.nn.MultiheadAttention", target=_mha_class),
    # torch's fused inference path would bypass the swapped self_attn: keep the layer on its
    # plain path, and the encoder from packing padded batches into nested tensors.
    nn.TransformerEncoderLayer: TorchSwap(
        "attention", "TransformerEncoderLayer without the fused fast path",
        target=lambda m: swaps.swapped_class(swaps.EncoderLayerNoFastPath, type(m)), when=_self_attn_swapped),
    nn.TransformerEncoder: TorchSwap("attention", "use_nested_tensor=False (padded batches stay dense)",
                                     attributes={"use_nested_tensor": False}, when=_has_swapped_encoder_layer),
}


FUSED_OP = {
    ("gated", "silu"): "fastattn.swiglu",
    ("gated", "gelu"): "fastattn.geglu(approximate='none')",
    ("gated", "gelu_tanh"): "fastattn.geglu(approximate='tanh')",
    ("bias", "gelu"): "fastattn.bias_gelu(approximate='none')",
    ("bias", "gelu_tanh"): "fastattn.bias_gelu(approximate='tanh')",
}
"""The fused op a swapped MLP calls, by (gated or bias-GELU layout, activation kind)."""


def describe(spec: MLPSwap, kind: str) -> str:
    """The report's replacement text for an MLP swap."""
    layout = "gated" if spec.mixin is swaps.GatedMLP else "bias"
    return f"{FUSED_OP[layout, kind]} ({spec.replacement})"


def family_of(model_type: str) -> Optional[tuple[str, Family]]:
    """The ``(name, Family)`` covering ``config.model_type``, or ``None``."""
    for name, family in HF_FAMILIES.items():
        if model_type in family.model_types:
            return name, family
    return None


MLP_CLASSES: dict[str, str] = {cls: layout for family in HF_FAMILIES.values()
                               for cls, layout in family.mlp_classes.items()}
"""Every registered MLP class name -> its layout in :data:`MLP_SWAPS`."""

ATTENTION_CLASSES: frozenset[str] = frozenset(c for family in HF_FAMILIES.values() for c in family.attention_classes)
