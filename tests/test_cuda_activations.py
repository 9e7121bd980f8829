"""CUDA C++ fused activations (csrc/cuda/activations) through ``backend="cuda"``, against
fastattn.reference in float64.

On a machine without a GPU the tensors are CPU tensors and the kernels run in the host
SIMT runtime (``fastattn._cuda_sim``, csrc/sim); with a GPU, on CUDA tensors through
``fastattn._cuda``. fp32 must match to 1e-5 of the output's scale; fp16/bf16 by
flash-attn's rule max|out - ref64| <= 2 max|ref_lowp - ref64| + floor. Every buffer the
backend allocates is poisoned with NaN first. Shapes include ragged rows (not a multiple
of the 16-byte vector), gate/up halves of one tensor (row stride 2*hidden) and
misaligned storage (the kernels' scalar path).
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference, testing

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.requires_backend("cuda"), pytest.mark.usefixtures("poisoned")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
SHAPES = [(1, 1), (3, 37), (2, 5, 64), (4, 1000), (1, 4099)]
SHAPE_IDS = ["1x1", "3x37", "2x5x64", "4x1000", "1x4099"]
LAYOUTS = ["contiguous", "halves", "misaligned"]


def make_pair(shape, dtype, layout, scale=3.0):
    """gate, up of ``shape`` in ``layout``: separate contiguous tensors, the two halves of one
    (..., 2*hidden) tensor, or views at an odd element offset (not 16-byte aligned)."""
    if layout == "halves":
        both = (torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE) * scale).to(dtype)
        return both[..., : shape[-1]], both[..., shape[-1]:]
    if layout == "misaligned":
        n = torch.Size(shape).numel()
        flat = (torch.randn(2 * n + 2, device=DEVICE) * scale).to(dtype)
        return flat[1 : n + 1].view(shape), flat[n + 2 :].view(shape)
    return tuple((torch.randn(*shape, device=DEVICE) * scale).to(dtype) for _ in range(2))


def _fwd_bwd(fn, inputs, dout, ct):
    leaves = [t.detach().to(ct).requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, dout.to(ct))


GATED = {"swiglu": lambda g, u, **kw: fastattn.swiglu(g, u, **kw),
         "geglu": lambda g, u, **kw: fastattn.geglu(g, u, **kw),
         "geglu_tanh": lambda g, u, **kw: fastattn.geglu(g, u, approximate="tanh", **kw)}


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", list(GATED), ids=list(GATED))
def test_gated_activation_fwd_bwd(activation, dtype, shape, layout):
    gate, up = make_pair(shape, dtype, layout)
    dout = torch.randn(shape, device=DEVICE).to(dtype)
    ref_fn = lambda g, u: reference.gated_activation(g, u, activation)  # noqa: E731
    out64, grads64 = _fwd_bwd(ref_fn, (gate, up), dout, torch.float64)
    outlp, gradslp = _fwd_bwd(ref_fn, (gate, up), dout, dtype)

    g, u = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    if layout != "contiguous":  # keep the strided/misaligned layout for the kernel
        g, u = gate.detach().requires_grad_(), up.detach().requires_grad_()
    out = GATED[activation](g, u, backend="cuda")
    assert out.dtype == dtype
    testing.assert_close(out, out64, outlp, f"{activation} out")
    dg, du = torch.autograd.grad(out, (g, u), dout)
    testing.assert_close(dg, grads64[0], gradslp[0], f"{activation} dgate")
    testing.assert_close(du, grads64[1], gradslp[1], f"{activation} dup")


@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
@pytest.mark.parametrize("layout", ["contiguous", "misaligned"], ids=["contiguous", "misaligned"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bias_gelu_fwd_bwd(dtype, shape, layout, approximate):
    x, _ = make_pair(shape, dtype, layout)
    bias = torch.randn(shape[-1], device=DEVICE).to(dtype)
    dout = torch.randn(shape, device=DEVICE).to(dtype)
    ref_fn = lambda t, b: reference.bias_gelu(t, b, approximate)  # noqa: E731
    out64, grads64 = _fwd_bwd(ref_fn, (x, bias), dout, torch.float64)
    outlp, gradslp = _fwd_bwd(ref_fn, (x, bias), dout, dtype)

    xk, bk = x.detach().requires_grad_(), bias.detach().clone().requires_grad_()
    out = fastattn.bias_gelu(xk, bk, approximate, backend="cuda")
    testing.assert_close(out, out64, outlp, "bias_gelu out")
    dx, db = torch.autograd.grad(out, (xk, bk), dout)
    testing.assert_close(dx, grads64[0], gradslp[0], "bias_gelu dx")
    # The bias gradient sums dx over rows: compare with the rule scaled by the row count.
    rows = max(1, x.numel() // shape[-1])
    testing.assert_close(db, grads64[1], gradslp[1], "bias_gelu dbias", floor=rows * testing.DEFAULT_FLOOR)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_activations_saturate_without_nan(dtype):
    """Large |x|: exp overflows inside sigmoid / the GELU derivative; results stay finite."""
    gate = torch.tensor([-1e4, -200.0, -90.0, -20.0, 0.0, 20.0, 90.0, 200.0, 1e4], device=DEVICE).to(dtype)
    up = torch.ones_like(gate)
    for activation, fn in GATED.items():
        g = gate.clone().requires_grad_()
        out = fn(g, up, backend="cuda")
        ref = reference.gated_activation(gate.double(), up.double(), activation)
        assert torch.isfinite(out).all(), activation
        assert (out.double() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item(), activation
        (dg,) = torch.autograd.grad(out.sum(), (g,))
        assert torch.isfinite(dg).all(), activation


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_propagates(dtype):
    gate = torch.randn(2, 40, device=DEVICE).to(dtype)
    gate[1, 17] = float("nan")
    out = fastattn.swiglu(gate, torch.randn(2, 40, device=DEVICE).to(dtype), backend="cuda")
    assert torch.isnan(out[1, 17]) and torch.isfinite(out[0]).all() and torch.isfinite(out[1, :17]).all()
