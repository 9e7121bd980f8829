"""The comparison the per-op test files (test_attention.py, test_ffn.py) run on each backend: a
public function called with ``backend=...`` against its float64 reference, results and
gradients, by fastattn.testing's rule, with the cases a backend declines by design named."""
from __future__ import annotations

import pytest
import torch

from fastattn import testing


def compare_on_backend(backend, declined, features, fn, ref_fn, inputs, dtype, results=1):
    """``fn(backend, *inputs)`` against ``ref_fn(*inputs)`` run in float64 and in ``dtype``: the
    first ``results`` outputs and the gradients (for one fixed ``dout`` of the first output) of
    every input that requires grad. fp32 to 1e-5 relative (gradients relative to the largest
    of them), fp16/bf16 by flash-attn's error ratio.

    ``declined`` maps a backend to the features (strings, e.g. ``"fp32"``, ``"varlen"``) whose
    cases it turns down by design; a case with one of ``features`` there must be refused by
    the dispatcher (then it is skipped, with the reason), and any other case must run: a backend
    that stops serving a case, or starts serving a declined one, fails."""
    expected = sorted(f for f in features if f in declined.get(backend, {}))
    try:
        got = _results_and_grads(lambda *xs: fn(backend, *xs), inputs, None)
    except ValueError as exc:
        if "cannot run" not in str(exc):
            raise
        assert expected, f"{backend} declined a case it should serve: {str(exc).splitlines()[0]}"
        pytest.skip(f"{backend} declines {', '.join(expected)}: {str(exc).splitlines()[0][:200]}")
    assert not expected, f"{backend} now serves {expected}: update the test file's table of declined cases"
    ref64 = _results_and_grads(ref_fn, inputs, torch.float64)
    ref_lowp = None if dtype == torch.float32 else _results_and_grads(ref_fn, inputs, None)
    # fp32 gradients are held relative to the largest of them: one can be ~0 by cancellation
    # (attention's dq with a single visible key), and rounding in a cancelling sum is relative
    # to its terms, not to its result.
    grad_scale = max((float(g[torch.isfinite(g)].abs().max()) if torch.isfinite(g).any() else 0.0
                      for g in ref64[results:]), default=None)
    for i, (g, r64) in enumerate(zip(got, ref64)):
        name = f"{backend} " + (f"result {i}" if i < results else f"grad {i - results}")
        scale = grad_scale if (dtype == torch.float32 and i >= results) else None
        testing.assert_close(g, r64, None if ref_lowp is None else ref_lowp[i], name, scale=scale)


def _results_and_grads(fn, inputs, compute_dtype):
    """``(*results, *grads)`` of ``fn(*inputs)``: the gradients of the first result for one
    fixed ``dout``, with respect to the inputs that require grad (detached copies, cast to
    ``compute_dtype`` unless it is ``None``). Other inputs are passed as they are."""
    leaves, args = [], []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            t = t.detach().to(compute_dtype) if compute_dtype is not None else t.detach().clone()
            leaves.append(t.requires_grad_())
        args.append(t)
    with torch.enable_grad():
        results = fn(*args)
        results = results if isinstance(results, tuple) else (results,)
        out = results[0]
        dout = testing.randn(*out.shape, seed=99, device=out.device).to(out.dtype)
        grads = torch.autograd.grad(out, leaves, dout) if leaves else ()
    return tuple(r.detach() for r in results) + tuple(grads)


def backends(*names):
    """``names`` as pytest params, each skipped (with the reason) where that backend cannot run
    on :func:`device_of` it (conftest's ``requires_backend``)."""
    return [pytest.param(n, id=n, marks=pytest.mark.requires_backend(n)) for n in names]


def device_of(backend: str) -> str:
    """Where a backend's cases run: CPU tensors for the native CPU kernels on every machine; for
    the GPU backends CUDA tensors where there is a GPU, else CPU tensors (the Triton interpreter,
    the CUDA simulator)."""
    return "cpu" if backend == "cpu" or not torch.cuda.is_available() else "cuda"
