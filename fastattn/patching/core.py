"""``patch`` and ``unpatch``: walk a model's module tree against the registry."""
from __future__ import annotations

from torch import nn

from fastattn.patching import registry, swaps
from fastattn.patching.report import PatchReport, Skip, Swap

FASTATTN = "fastattn"


def _is_hf_model(module: nn.Module) -> bool:
    # Duck-typed so that patching torch-only models never imports transformers.
    return hasattr(module, "set_attn_implementation") and hasattr(getattr(module, "config", None), "model_type")


def patch(model: nn.Module, attention: bool = True, ffn: bool = True) -> PatchReport:
    """Swap fastattn into ``model`` in place; returns a :class:`PatchReport`.

    Args:
        model: any ``nn.Module``; the root itself may be a swappable module.
        attention: swap attention: every ``torch.nn.MultiheadAttention`` (exact class) to
            :class:`fastattn.nn.MultiheadAttention`, the ``TransformerEncoderLayer``/``Encoder``
            around them off torch's fused fast path (which would bypass them), and Hugging Face
            models of the registered families to ``attn_implementation="fastattn"``.
        ffn: swap the MLPs of the registered Hugging Face families to fused activations
            (SwiGLU/GeGLU for gated MLPs, bias-GELU for GPT-2/GPT-NeoX/BERT) matching the
            model's own activation.

    Weights are untouched: a swap changes a module's class (or its model's attention
    implementation), never its parameters, so ``state_dict`` keys and values stay identical,
    no parameter is added and gradients land on the original parameters. Patching a patched
    model changes nothing (the report lists those modules as skipped). See
    :mod:`fastattn.patching.registry` for the table of what is swapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report, body = PatchReport(), PatchReport()
    modules = list(model.named_modules(remove_duplicate=True))
    switched_configs: set[int] = set()
    if attention:
        seen: set[int] = set()
        for name, module in modules:  # outermost first: it switches the configs it shares with inner ones
            if _is_hf_model(module) and id(module.config) not in seen:
                seen.add(id(module.config))
                if _patch_hf_attention(name, module, report):
                    switched_configs.add(id(module.config))
    for name, module in reversed(modules):  # children before their parents
        if swaps.saved(module) is not None and not _is_hf_model(module):
            body.skipped.append(Skip(name, f"{type(module).__name__} is already swapped by fastattn"))
            continue
        cls_name = type(module).__name__
        if type(module) in registry.TORCH_MODULES:
            _patch_torch_module(name, module, registry.TORCH_MODULES[type(module)], attention, ffn, body)
        elif isinstance(module, nn.TransformerEncoderLayer) and attention:
            body.skipped.append(Skip(name, f"{cls_name} subclasses nn.TransformerEncoderLayer: torch's fused "
                                           f"inference fast path may still bypass its self_attn in eval mode"))
        elif isinstance(module, nn.MultiheadAttention) and not _is_fastattn_mha(module) and attention:
            body.skipped.append(Skip(name, f"{cls_name} subclasses nn.MultiheadAttention and may change its "
                                           f"forward: left as is"))
        elif cls_name in registry.MLP_CLASSES and _from_transformers(module):
            if ffn:
                _patch_mlp(name, module, registry.MLP_SWAPS[registry.MLP_CLASSES[cls_name]], body)
        elif cls_name in registry.ATTENTION_CLASSES and _from_transformers(module):
            config = getattr(module, "config", None)
            if config is not None and id(config) in switched_configs:
                body.swapped.append(Swap(name, cls_name, "fastattn attention function (via the model's "
                                                          "attn_implementation)"))
    # Model-level switches first, then the modules in tree order (the walk went bottom-up).
    report.swapped.extend(reversed(body.swapped))
    report.skipped.extend(reversed(body.skipped))
    return report


def unpatch(model: nn.Module) -> list[str]:
    """Undo every fastattn swap in ``model`` in place (the original classes, attention
    implementation and attributes come back exactly); a no-op on a model never patched.
    Returns the qualified names of the modules restored."""
    restored = []
    for name, module in model.named_modules(remove_duplicate=True):
        if swaps.saved(module) is not None:
            swaps.restore(module)
            restored.append(name)
    return restored


def is_patched(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a fastattn swap."""
    return any(swaps.saved(m) is not None for m in model.modules())


def _from_transformers(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers.")


def _is_fastattn_mha(module: nn.Module) -> bool:
    from fastattn.nn import MultiheadAttention

    return isinstance(module, MultiheadAttention)


def _patch_hf_attention(name: str, model: nn.Module, report: PatchReport) -> bool:
    model_type = model.config.model_type
    if registry.family_of(model_type) is None:
        report.skipped.append(Skip(name, f"transformers model type {model_type!r} is not in fastattn's registry"))
        return False
    current = model.config._attn_implementation
    if current == FASTATTN:
        report.skipped.append(Skip(name, f"{type(model).__name__} already uses attn_implementation='fastattn'"))
        return False
    import fastattn.integrations.transformers  # noqa: F401  (registers "fastattn")

    model.set_attn_implementation(FASTATTN)
    if model.config._attn_implementation != FASTATTN:
        report.skipped.append(Skip(name, f"{type(model).__name__} cannot switch its attention implementation"))
        return False
    swaps.record(model, attn_implementation=current)
    report.swapped.append(Swap(name, f"{type(model).__name__} (attn_implementation={current!r})",
                               "attn_implementation='fastattn'"))
    return True


def _patch_torch_module(name, module, spec: registry.TorchSwap, attention: bool, ffn: bool, report) -> None:
    if not (attention if spec.needs == "attention" else ffn):
        return
    if spec.when is not None:
        why = spec.when(module)
        if why is not None:
            report.skipped.append(Skip(name, f"{type(module).__name__}: {why}"))
            return
    original = type(module).__name__
    changed = {attr: getattr(module, attr) for attr, value in spec.attributes.items() if getattr(module, attr) != value}
    if spec.target is None and not changed:
        return
    if spec.target is not None:
        swaps.swap_class(module, spec.target(module))
    swaps.record(module, **changed)
    for attr in changed:
        setattr(module, attr, spec.attributes[attr])
    report.swapped.append(Swap(name, original, spec.replacement))


def _patch_mlp(name, module, spec: registry.MLPSwap, report) -> None:
    original = type(module).__name__
    act = getattr(module, spec.activation_attr, None)
    kind = swaps.activation_kind(act)
    if kind not in spec.kinds:
        report.skipped.append(Skip(name, f"{original}: activation {type(act).__name__} has no fused form in fastattn"))
        return
    for child_name in spec.by_weight:
        child = getattr(module, child_name, None)
        if type(child).__name__ not in spec.weight_types or getattr(child, "bias", None) is None:
            report.skipped.append(Skip(name, f"{original}.{child_name} is {type(child).__name__} (fused only from a "
                                             f"plain {'/'.join(spec.weight_types)} with a bias)"))
            return
    swaps.swap_class(module, swaps.swapped_class(spec.mixin, type(module), kind=kind))
    report.swapped.append(Swap(name, original, registry.describe(spec, kind)))
