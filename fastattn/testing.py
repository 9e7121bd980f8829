"""Check a kernel against the float64 oracle the way fastattn's own test suite does.

One tolerance rule serves the whole project (the test suite, ``python -m fastattn verify``
and the benchmarks' sanity checks). It is flash-attn's: a kernel run in a low-precision dtype
may be at most twice as far from the exact answer as the same math done naively in that
dtype. With ``ref64`` the reference (:mod:`fastattn.reference`) run in float64 on the same
inputs, ``ref_lowp`` the same reference run in the input dtype::

    max|got - ref64| <= 2 * max|ref_lowp - ref64|          (flash-attn's error ratio)
                        + eps(got.dtype) / 2 * max|ref64|   (rounding the answer to got's dtype)
                        + floor * max(1, max|ref64|)       (1e-5 relative by default)

The rounding term, half an ulp at the largest magnitude, is the one error no kernel writing
``got.dtype`` can avoid (on a small tensor the low-precision reference may happen to round
luckily). For fp32 inputs the first two terms are ~1e-7 relative, so fp32 is held to
``floor`` (1e-5) relative. Non-finite values must sit where the oracle has them, with the
same values; a NaN anywhere else (an element the kernel never wrote, when outputs were
poisoned) fails.

Typical use::

    from fastattn import reference, testing

    q, k, v = (testing.randn(2, 4, 100, 64, dtype=torch.bfloat16, seed=s) for s in range(3))
    with testing.poisoned_allocations():
        out = fastattn.flash_attn_func(q, k, v, causal=True)
    ref64 = reference_fn(q.double(), k.double(), v.double())
    ref_lowp = reference_fn(q, k, v)
    testing.assert_close(out, ref64, ref_lowp, name="out")
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch

__all__ = ["DEFAULT_FLOOR", "assert_close", "error_and_bound", "poisoned_allocations", "randn",
           "forward_and_grads"]

DEFAULT_FLOOR = 1e-5
"""The relative floor of the rule: fp32 results are held to 1e-5 relative."""


def error_and_bound(got: torch.Tensor, ref64: torch.Tensor, ref_lowp: Optional[torch.Tensor] = None, *,
                    floor: float = DEFAULT_FLOOR, scale: Optional[float] = None) -> tuple[float, float]:
    """``(max error of got against ref64, the bound the rule allows)``.

    Args:
        got: the kernel's result, any floating dtype.
        ref64: the reference in float64 on the same inputs, same shape as ``got``.
        ref_lowp: the reference computed in the input dtype (``None``: fp32-style inputs, the
            error-ratio term is dropped).
        floor: the relative floor (``floor * max(1, scale)`` is always allowed).
        scale: the magnitude the floor is relative to; default ``max|ref64|`` over finite
            elements. Pass a larger one where a result is small by cancellation but its
            inputs are not (e.g. one gradient among several of one backward).

    A shape mismatch or a non-finite pattern that differs from the oracle's gives
    ``(inf, 0.0)``: no bound covers it.
    """
    if tuple(got.shape) != tuple(ref64.shape):
        return float("inf"), 0.0
    out_dtype = got.dtype
    got, ref64 = got.detach().double(), ref64.detach().double()
    finite = torch.isfinite(ref64)
    if not all(torch.equal(test(got), test(ref64)) for test in (torch.isnan, torch.isposinf, torch.isneginf)):
        return float("inf"), 0.0
    if not finite.any():
        return 0.0, 0.0
    err = (got - ref64)[finite].abs().max().item()
    magnitude = ref64[finite].abs().max().item() if scale is None else scale
    base = 0.0
    if ref_lowp is not None:
        if tuple(ref_lowp.shape) != tuple(ref64.shape):
            raise ValueError(f"ref_lowp has shape {tuple(ref_lowp.shape)}, ref64 {tuple(ref64.shape)}")
        base = (ref_lowp.detach().double() - ref64)[finite].abs().max().item()
    # Half an ulp of the output dtype at the largest magnitude: what rounding a result computed
    # in fp32 to ``got``'s dtype may cost (a value a hair from a rounding boundary can land one
    # ulp from the exact answer's own rounding).
    rounding = 0.5 * torch.finfo(out_dtype).eps * magnitude if out_dtype != torch.float64 else 0.0
    return err, 2.0 * base + rounding + floor * max(1.0, magnitude)


def assert_close(got: torch.Tensor, ref64: torch.Tensor, ref_lowp: Optional[torch.Tensor] = None,
                 name: str = "result", *, floor: float = DEFAULT_FLOOR, scale: Optional[float] = None) -> None:
    """Assert ``got`` is within the project's tolerance of the float64 oracle (see the module
    docstring for the rule; arguments as :func:`error_and_bound`). The message names ``name``,
    the error and the bound, or what broke first (shape, NaN, infinity pattern)."""
    assert tuple(got.shape) == tuple(ref64.shape), f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    finite = torch.isfinite(ref64)
    assert not torch.isnan(got[finite]).any(), f"{name}: NaN where the reference is finite (element never written?)"
    assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite pattern differs from the reference"
    err, bound = error_and_bound(got, ref64, ref_lowp, floor=floor, scale=scale)
    assert err <= bound, f"{name}: max error {err:.3g} > allowed {bound:.3g}"


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Inside the block, every uninitialised tensor torch allocates (``torch.empty``,
    ``empty_like``, ``new_empty``, ``empty_strided``, ... on any device) comes filled with NaN
    (floating dtypes) or the dtype's largest value (integers), so an output element a kernel
    forgets to write shows up in the comparison instead of passing on lucky zeros.

    This is torch's own ``fill_uninitialized_memory`` switch, which acts while deterministic
    algorithms are on; it is switched on with ``warn_only=True`` (nondeterministic ops warn,
    not raise) and both settings are restored on exit."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, device="cpu", scale: float = 1.0,
          requires_grad: bool = False) -> torch.Tensor:
    """Standard-normal values times ``scale`` of ``shape``, drawn in float32 from a generator
    seeded with ``seed`` (the same values on every device and machine), then cast to ``dtype``
    and moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


def forward_and_grads(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                      dout: Optional[torch.Tensor] = None, *, compute_dtype: Optional[torch.dtype] = None
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``fn(*inputs)`` and the gradients of ``<fn(*inputs), dout>`` with respect to every
    floating-point input (none when ``dout`` is ``None``), with the floating-point inputs
    first detached and cast to ``compute_dtype`` (e.g. ``torch.float64`` for the oracle,
    ``None`` to keep their dtypes). Other inputs are passed through unchanged."""
    leaves = []
    call_args = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().to(compute_dtype) if compute_dtype is not None else t.detach().clone()
            t.requires_grad_(dout is not None)
            leaves.append(t)
        call_args.append(t)
    if dout is None:
        with torch.no_grad():
            return fn(*call_args), ()
    with torch.enable_grad():
        out = fn(*call_args)
        grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return out.detach(), tuple(grads)
