"""Backend registry and selection: the one place that decides which kernel runs.

Every functional op is split into named *core ops* (``"attention_fwd"``,
``"attention_bwd"``, ``"gated_act_fwd"``, ...; the full list and each one's
signature is in :data:`OP_SIGNATURES`). A backend (``"reference"``,
``"triton"``, ``"cuda"``, ``"cpu"``) registers an implementation of a core op
with :func:`register`; the public op calls :func:`select` once per call to pick
one.

Selection rules (docs/architecture.md, "The path of one call"):

* an explicit backend (the ``backend=`` argument, else the innermost
  ``with fastattn.backend(name):`` block) must be available for the device of
  the inputs and must support the inputs, or a ``ValueError`` says why and
  lists what is available;
* ``"auto"`` walks :data:`AUTO_ORDER` for the inputs' device and takes the
  first backend that is available and supports the inputs; the ``reference``
  backend supports everything and ends every list, so ``auto`` never fails.
  ``auto`` never picks ``triton`` or ``cuda`` for CPU tensors (those run there
  only as the interpreter/simulator, on explicit request).
"""
from __future__ import annotations

import contextlib
import importlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

BACKENDS = ("reference", "triton", "cuda", "cpu")
"""Every backend name the public API accepts, besides ``"auto"``."""

AUTO_ORDER = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}
"""Preference of ``auto`` per device type; backends missing an op are skipped.

On CUDA tensors Triton comes first: its kernels are autotuned per device and cover the
most options; the CUDA C++ kernels serve what Triton does not and every explicit
``backend="cuda"`` call. Until GPU benchmarks exist (benchmarks/RESULTS.md: not
measured) this order is a judgement, not a measurement."""

OP_SIGNATURES = {
    # q (B,Hq,Lq,D), k (B,Hk,Lk,D), v (B,Hk,Lk,Dv), any strides -> (out (B,Hq,Lq,Dv) in q's
    # dim order, lse float32 (B,Hq,Lq)). See fastattn.ops.attention for the exact contract.
    "attention_fwd": "fn(q, k, v, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args) -> (out, lse)",
    "attention_bwd": "fn(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args) -> (dq, dk, dv)",
    # The backward when a float attn_mask requires grad: also d(mask) (B,Hq,Lq,Lk) in the mask's dtype.
    "attention_bwd_mask_grad": "fn(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args) -> (dq, dk, dv, dmask)",
    "kvcache_fwd": "fn(q, k_cache, v_cache, k_new, v_new, cache_seqlens, *, alibi_slopes, args) -> (out, lse)",
    "softmax_fwd": "fn(scores, mask, scale, causal) -> probs",
    "softmax_bwd": "fn(dprobs, probs, scale) -> dscores",
    "gated_act_fwd": "fn(gate, up, activation) -> out",
    "gated_act_bwd": "fn(dout, gate, up, activation) -> (dgate, dup)",
    "bias_gelu_fwd": "fn(x, bias, approximate) -> out",
    "bias_gelu_bwd": "fn(dout, x, bias, approximate) -> dx",
    # residuals "none" | "hidden" | "gate_up": what the forward keeps for the backward, and
    # what res_a/res_b hold (fastattn.ops.ffn.RESIDUALS).
    "feed_forward_fwd": "fn(x, w_gate, w_up, w_down, activation, residuals) -> (out, res_a, res_b)",
    "feed_forward_bwd": "fn(dout, x, w_gate, w_up, w_down, res_a, res_b, activation, residuals) -> (dx, dw_gate, dw_up, dw_down)",
}


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one core op.

    ``supports`` takes the inputs of the family's *forward* op (a backward op's
    ``supports`` too: it is asked before the forward runs), e.g. for attention
    ``supports(q, k, v, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
    args)``, and returns ``None`` when the implementation covers them, else a
    short reason (which ``select`` shows when an explicit backend cannot run).
    """

    op: str
    backend: str
    fn: Callable
    supports: Optional[Callable] = None
    delegated_to: Optional[Callable[..., str]] = None
    """For an implementation that hands some or all of its calls to another backend's kernel
    (the CUDA C++ attention backward, built without its kernels, hands its calls to the Triton
    or reference backward): ``delegated_to(device, *inputs, **kwargs)`` names the backend whose kernel
    actually runs a call with these inputs (the family forward's, as ``supports`` takes them;
    none: the calls this backend computes itself, if any), so that reports never credit this
    backend with it. ``None``: this backend's own kernel, always."""


_IMPLS: dict[tuple[str, str], Impl] = {}
_AVAILABILITY: dict[str, Callable[[torch.device], Optional[str]]] = {}
# (backend, device type) -> unavailable_reason: machine facts, probed once per process so that
# the selection path torch.compile traces holds only dict lookups (no extension calls, no
# imports, no environment reads). Filled for cpu and cuda when the backends load.
_REASONS: dict[tuple[str, str], Optional[str]] = {}
_state = threading.local()


def register(op: str, backend: str, fn: Callable, supports: Optional[Callable] = None, *,
             delegated_to: Optional[Callable[..., str]] = None) -> None:
    """Register ``fn`` as ``backend``'s implementation of core op ``op`` (``delegated_to``:
    see :attr:`Impl.delegated_to`). fastattn's own backends never call this: their ``OPS``
    tables (:data:`BACKEND_PACKAGES`) are entered through it on first use; it stays public for
    a stand-in implementation (tests, experiments)."""
    if op not in OP_SIGNATURES:
        raise KeyError(f"unknown core op {op!r}; known: {sorted(OP_SIGNATURES)}")
    if backend not in BACKENDS:
        raise KeyError(f"unknown backend {backend!r}; known: {BACKENDS}")
    _IMPLS[(op, backend)] = Impl(op, backend, fn, supports, delegated_to)


def runs_on(op: str, backend: str, device: torch.device | str, *inputs, **kwargs) -> str:
    """The backend whose kernel runs core op ``op`` when ``backend`` is selected for inputs on
    ``device``: ``backend`` itself, unless its implementation delegates. Given the call's
    inputs (those :func:`select` takes), the answer is for that call: ``runs_on(
    "attention_bwd", "cuda", dev, q, k, v, ...)`` is ``"triton"`` for a head dim over 128
    where Triton runs, ``"cuda"`` otherwise. For reports."""
    _load_backends()
    impl = _IMPLS.get((op, backend))
    if impl is None:
        raise KeyError(f"backend {backend!r} has no implementation of {op!r}")
    return backend if impl.delegated_to is None else impl.delegated_to(torch.device(device), *inputs, **kwargs)


def register_backend(name: str, available: Callable[[torch.device], Optional[str]]) -> None:
    """Declare how to tell whether backend ``name`` can run on a device.

    ``available(device)`` returns ``None`` when it can, else the reason it
    cannot (e.g. "fastattn._cuda was not built", "set TRITON_INTERPRET=1").
    """
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {BACKENDS}")
    _AVAILABILITY[name] = available


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """Why backend ``name`` cannot run on ``device`` (``None`` if it can)."""
    _load_backends()
    device = torch.device(device)
    key = (name, device.type)
    if key not in _REASONS:
        check = _AVAILABILITY.get(name)
        _REASONS[key] = "not built into this installation" if check is None else check(device)
    return _REASONS[key]


def implementations(op: str) -> dict[str, Impl]:
    """The registered implementations of ``op``, keyed by backend name."""
    _load_backends()
    return {b: impl for (o, b), impl in _IMPLS.items() if o == op}


def implementation(op: str, backend: str) -> Impl:
    """``backend``'s implementation of ``op`` (one dictionary lookup: the custom ops call this
    on every call, with the name :func:`select` returned)."""
    _load_backends()
    try:
        return _IMPLS[(op, backend)]
    except KeyError:
        raise KeyError(f"backend {backend!r} has no implementation of {op!r}") from None


def available_implementation(op: str, backend: str, device_type: str) -> Optional[Impl]:
    """``backend``'s implementation of ``op`` when that backend runs on ``device_type`` devices
    and has one, else ``None`` (never raises): what a public op's short route for plain eager
    calls asks on every call, answered by two dictionary lookups once the backends are loaded."""
    if not _loaded:
        _load_backends()
    reason = _REASONS.get((backend, device_type), "")
    if reason == "":  # not probed yet (a stand-in availability rule, in tests)
        reason = unavailable_reason(backend, torch.device(device_type))
    return None if reason is not None else _IMPLS.get((op, backend))


def check_backend_name(backend: str) -> str:
    """Validate a ``backend=`` argument; returns it, or raises ``ValueError``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {('auto',) + BACKENDS}; got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}; got {backend!r}")
    return backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` for every fastattn op called inside the block
    (unless the call passes its own ``backend=``). Nests; thread-local.

    >>> with fastattn.backend("reference"):
    ...     out = fastattn.scaled_dot_product_attention(q, k, v)
    """
    check_backend_name(name)
    stack = _stack()
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def current_backend() -> str:
    """The backend selected by the innermost ``fastattn.backend`` block, else ``"auto"``."""
    stack = _stack()
    return stack[-1] if stack else "auto"


def select(ops: str | tuple[str, ...], requested: Optional[str], device: torch.device, *args, **kwargs) -> str:
    """Pick the backend that runs core op(s) ``ops`` for inputs on ``device``.

    ``ops`` is one core op name or a tuple (e.g. forward and backward, when
    gradients are needed): the chosen backend implements and supports them all.
    ``requested`` is the op's ``backend=`` argument (``None`` means "not
    given": the innermost ``fastattn.backend`` block's choice, else ``"auto"``).
    ``args``/``kwargs`` go to each candidate's ``supports``. Returns the
    backend name.
    """
    _load_backends()
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    name = current_backend() if requested is None else check_backend_name(requested)
    device = torch.device(device)
    if name != "auto":
        why = _why_not(ops, name, device, args, kwargs)
        if why is not None:
            raise ValueError(
                f"backend={name!r} cannot run this {'/'.join(ops)} call on {device.type}: {why}. "
                f"Backends here: {_describe_available(ops[0], device)}"
            )
        return name
    for candidate in AUTO_ORDER.get(device.type, ("reference",)):
        if _why_not(ops, candidate, device, args, kwargs) is None:
            return candidate
    return "reference"


def _why_not(ops: tuple[str, ...], name: str, device: torch.device, args, kwargs) -> Optional[str]:
    why = unavailable_reason(name, device)
    if why is not None:
        return why
    for op in ops:
        impl = _IMPLS.get((op, name))
        if impl is None:
            return f"it has no implementation of {op}"
        if impl.supports is not None:
            why = impl.supports(*args, **kwargs)
            if why is not None:
                return why
    return None


def available_backends(device: torch.device | str = "cpu") -> dict[str, Optional[str]]:
    """Every backend name mapped to ``None`` (usable on ``device``) or the reason it is not."""
    return {name: unavailable_reason(name, torch.device(device)) for name in BACKENDS}


def _describe_available(op: str, device: torch.device) -> str:
    parts = []
    for name in BACKENDS:
        why = unavailable_reason(name, device)
        if (op, name) not in _IMPLS:
            why = why or f"no {op}"
        parts.append(f"{name} ({'ok' if why is None else why})")
    return ", ".join(parts)


def _stack() -> list[str]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


BACKEND_PACKAGES: dict[str, str] = {name: f"fastattn.backends.{name}" for name in BACKENDS}
"""The package of each backend. Each declares ``available(device)`` and a table
``OPS = {core op: (fn, supports)}`` (a third element, ``delegated_to``, marks an op whose
work another backend's kernel does: see :attr:`Impl.delegated_to`). Nothing registers
itself: the tables are read here, once, on first use."""

IMPORT_ERRORS: dict[str, str] = {}
"""Backend packages that failed to import (e.g. no Triton), by backend name, with the error;
those backends are reported unavailable with it."""

_loaded = False


def _import_backend_package(name: str):
    package = BACKEND_PACKAGES[name]
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:  # the package not in this installation, or its dependency
        if exc.name != package:
            IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
    except ImportError as exc:  # a compiled extension that failed to load
        IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
    return None


def _load_backends() -> None:
    """Import every backend package once and read its table; then probe availability once per
    (backend, device type), so that selection while tracing is dictionary lookups only.

    Marked constant for torch.compile (below): when a program's first fastattn call is traced,
    Dynamo runs this (imports and all, which it cannot trace) instead of tracing into it."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for backend_name in BACKENDS:
        package = _import_backend_package(backend_name)
        if package is None:
            reason = f"{BACKEND_PACKAGES[backend_name]}: {IMPORT_ERRORS.get(backend_name, 'not in this installation')}"
            _AVAILABILITY[backend_name] = lambda device, reason=reason: reason
            continue
        _AVAILABILITY[backend_name] = package.available
        for op, (fn, supports, *delegated) in package.OPS.items():
            register(op, backend_name, fn, supports, delegated_to=delegated[0] if delegated else None)

    for name in BACKENDS:
        for device_type in ("cpu", "cuda"):
            unavailable_reason(name, torch.device(device_type))


# What torch.compiler.assume_constant_result(_load_backends) does, without importing Dynamo:
# Dynamo imports Triton, and ``import fastattn`` must not (``python -m fastattn verify`` and the
# test suite switch on the Triton interpreter before Triton is first imported).
# tests/test_compile_first_call.py fails if a torch release stops honouring the mark.
_load_backends._dynamo_marked_constant = True
