"""``verify``: fastattn against the original modules, on the same inputs, in place."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from fastattn.patching import core, registry, swaps
from fastattn.patching.report import ModuleError, ParamError, VerifyReport

_SEED = 1234
_GRAD_FLOOR = 1e-3


def verify(model: nn.Module, *inputs: Any, backward: bool = True, rtol: float = 1e-4, **kwargs: Any) -> VerifyReport:
    """Run ``model(*inputs, **kwargs)`` with the original modules and with fastattn's, and
    compare outputs, parameter gradients and each swapped module's output.

    Args:
        model: patched or not. A patched model is compared against its originals by
            unpatching it temporarily; an unpatched one against :func:`fastattn.patch` (with
            its defaults) applied temporarily. Either way it is left exactly as found: same
            classes, attention implementation, mode, parameters, ``.grad`` and RNG state.
        inputs, kwargs: the forward arguments.
        backward: also compare gradients: ``autograd.grad`` of every floating output against
            one random cotangent (the same in both runs) with respect to every parameter that
            requires grad (``.grad`` is not touched). ``grad_max_rel_err`` is the largest
            ``||g_fastattn - g_original|| / ||g_original||``, where a gradient norm below 1e-3 of
            the largest parameter's is replaced by that floor (a mathematically zero gradient,
            such as a key bias's, is otherwise all rounding noise).
        rtol: the tolerance ``ok`` applies to ``max_rel_err`` and ``grad_max_rel_err``.

    Both runs start from the same RNG state, so torch dropout layers draw the same masks;
    attention dropout inside fastattn draws its own, so compare in ``eval()`` mode or with
    attention dropout 0. torch's fused MultiheadAttention/encoder inference fast path is off
    in both runs (its nested-tensor outputs zero the padded positions; the plain path is the
    same math and defines them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_patched = core.is_patched(model)
    if not was_patched:
        core.patch(model)
    try:
        state = swaps.suspend(model)  # the original modules, until resume
        try:
            with _capture(_targets_of(model, state)) as records:
                original = _run(model, inputs, kwargs, backward)
                for r in records:
                    r.run = 1
                swaps.resume(state)
                state = None
                fast = _run(model, inputs, kwargs, backward)
        finally:
            if state is not None:
                swaps.resume(state)
    finally:
        if not was_patched:
            core.unpatch(model)
    return _compare(original, fast, records, backward, rtol)


def _targets_of(model: nn.Module, state) -> list[tuple[str, nn.Module]]:
    """Named modules whose forward fastattn changes (class swaps, HF attention layers)."""
    swapped = {id(module) for module, undo, _ in state if "__class__" in undo}
    hf_models = any("attn_implementation" in undo for _, undo, _ in state)
    targets = []
    for name, module in model.named_modules():
        if id(module) in swapped and not isinstance(module, (nn.TransformerEncoderLayer,)):
            targets.append((name, module))
        elif hf_models and type(module).__name__ in registry.ATTENTION_CLASSES:
            targets.append((name, module))
    return targets


class _Recorder:
    """Collects one module's first tensor output per call, per run."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.type = name, type(module).__name__
        self.runs: list[list[torch.Tensor]] = [[], []]
        self.run = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        tensor = _first_tensor(output)
        if tensor is not None:
            self.runs[self.run].append(tensor.detach())


@contextlib.contextmanager
def _capture(targets) -> Iterator[list]:
    records = [_Recorder(name, m) for name, m in targets]
    try:
        yield records
    finally:
        for r in records:
            r.handle.remove()


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _float_tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        return [t for v in output.values() for t in _float_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _float_tensors(v)]
    return []


def _run(model, inputs, kwargs, backward):
    """One forward (and backward) from a fixed RNG state; returns (outputs, {param: grad})."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if backward else []
    devices = sorted({p.device.index for p in model.parameters() if p.is_cuda})
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_SEED)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.enable_grad() if backward else contextlib.nullcontext():
                outputs = _float_tensors(model(*inputs, **kwargs))
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        grads = {}
        if backward and params:
            live = [t for t in outputs if t.requires_grad]
            if live:
                gen = torch.Generator().manual_seed(_SEED)
                cotangents = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) for t in live]
                got = torch.autograd.grad(live, [p for _, p in params], cotangents, allow_unused=True)
                grads = {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params, got)}
    return [t.detach() for t in outputs], grads


def _errors(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    if a.shape != ref.shape:
        raise ValueError(f"fastattn and the original modules gave outputs of different shapes: "
                         f"{tuple(a.shape)} vs {tuple(ref.shape)}")
    if a.numel() == 0:
        return 0.0, 0.0
    a, ref = a.double(), ref.double()
    same_nan = torch.isnan(a) & torch.isnan(ref)
    diff = torch.where(same_nan, torch.zeros_like(a), (a - ref).abs())
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    # An infinity both sides share is no error either.
    diff = torch.where(torch.isinf(a) & (a == ref), torch.zeros_like(diff), diff)
    abs_err = float(diff.max())
    scale = float(torch.where(torch.isfinite(ref), ref.abs(), torch.zeros_like(ref)).max())
    return abs_err, abs_err / scale if scale > 0 else abs_err


def _compare(original, fast, records, backward, rtol) -> VerifyReport:
    (ref_out, ref_grads), (out, grads) = original, fast
    if len(ref_out) != len(out):
        raise ValueError(f"fastattn and the original modules gave {len(out)} and {len(ref_out)} floating outputs")
    pairs = [_errors(a, b) for a, b in zip(out, ref_out)]
    max_abs = max((p[0] for p in pairs), default=0.0)
    max_rel = max((p[1] for p in pairs), default=0.0)
    grad_err, worst = None, []
    if backward:
        norms = {n: float(torch.linalg.vector_norm(g.double())) for n, g in ref_grads.items()}
        # A gradient far below the largest one is the rounding noise of an exact zero (e.g. a key
        # bias: softmax ignores a per-row shift), so it is measured against this floor instead.
        floor = _GRAD_FLOOR * max(norms.values(), default=0.0)
        rel = []
        for name, g_ref in ref_grads.items():
            num = float(torch.linalg.vector_norm(grads[name].double() - g_ref.double()))
            den = max(norms[name], floor)
            rel.append(ParamError(name, num / den if den > 0 else num))
        rel.sort(key=lambda e: -e.rel_err if not math.isnan(e.rel_err) else -math.inf)
        grad_err = rel[0].rel_err if rel else 0.0
        worst = rel[:5]
    rows = []
    for r in records:
        ref_calls, fast_calls = r.runs
        errs = [_errors(a, b) for a, b in zip(fast_calls, ref_calls)]
        if errs:
            rows.append(ModuleError(r.name, r.type, len(errs), max(e[0] for e in errs), max(e[1] for e in errs)))
    ok = max_rel <= rtol and (grad_err is None or grad_err <= rtol)
    return VerifyReport(max_abs_err=max_abs, max_rel_err=max_rel, grad_max_rel_err=grad_err, per_module=rows,
                        ok=bool(ok), rtol=rtol, worst_params=worst)
