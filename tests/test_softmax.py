"""Fused scale-mask-softmax, ``fastattn.scaled_masked_softmax(..., backend=b)``, for every
backend with a kernel for it (Triton: kernels/softmax.py; CUDA C++: csrc/cuda/softmax),
against ``fastattn.reference.scaled_masked_softmax`` in float64.

Megatron-LM FusedScaleMaskSoftmax semantics: bool mask True = masked out, float mask added
after scaling, causal top-left, masks broadcast, fully masked rows give 0. Without a GPU the
Triton kernels run under the Triton interpreter and the CUDA C++ kernels in the host SIMT
simulator, both on CPU tensors. Tolerance: :mod:`fastattn.testing` (fp32 1e-5 relative,
fp16/bf16 flash-attn's error-ratio rule). Outputs are poisoned with NaN before the kernel
writes them. Kernel-variant tests of one backend live in tests/test_<backend>_softmax.py.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference, testing
from triton_bf16_rounding import rounded_bf16_casts

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
BACKENDS = [pytest.param(b, marks=pytest.mark.requires_backend(b), id=b) for b in ("triton", "cuda")]
MASKS = ["none", "bool", "padding", "additive"]

pytestmark = pytest.mark.usefixtures("poisoned")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The backend under test; Triton's bf16 casts round as the GPU does (the interpreter
    truncates: see tests/triton_bf16_rounding.py)."""
    if request.param == "triton":
        with rounded_bf16_casts():
            yield request.param
    else:
        yield request.param


def make_mask(kind, shape, dtype):
    """A mask broadcastable to ``shape`` (B, H, Lq, Lk) of the given kind."""
    b, _, lq, lk = shape
    if kind == "none":
        return None
    if kind == "bool":  # Megatron's (B, 1, Lq, Lk), True = masked out
        return torch.rand(b, 1, lq, lk, device=DEVICE) < 0.3
    if kind == "padding":  # (B, 1, 1, Lk): the last keys of each batch padded; batch 0 fully padded
        lengths = torch.randint(1, lk + 1, (b,))
        lengths[0] = 0
        return (torch.arange(lk).view(1, 1, 1, lk) >= lengths.view(b, 1, 1, 1)).to(DEVICE)
    additive = torch.randn(1, 1, lq, lk, device=DEVICE) * 2  # float (1, 1, Lq, Lk), added after scaling
    additive[..., ::3] = float("-inf")
    return additive.to(dtype)


def check_softmax(backend, scores, mask, scale, causal, dtype):
    """Forward against the reference (float64 and ``dtype``); backward, through autograd,
    against ``dx = scale * y * (dy - sum(dy * y))`` in float64 and in ``dtype`` evaluated on
    the ``y`` the forward returned (the backward's actual input: evaluating it on the
    reference's ``y`` instead would charge the forward's last rounding to the backward
    twice). Autograd through the reference is not used: it gives NaN on fully masked rows,
    whose true gradient is 0."""
    dout = torch.randn(scores.shape, device=DEVICE).to(dtype)
    refs = []
    for ct in (torch.float64, dtype):
        m = mask if mask is None or mask.dtype == torch.bool else mask.to(ct)
        refs.append(reference.scaled_masked_softmax(scores.to(ct), m, scale, causal, upcast=ct == torch.float64).to(ct))
    x = scores.detach().requires_grad_()
    y = fastattn.scaled_masked_softmax(x, mask, scale, causal, backend=backend)
    assert y.dtype == dtype and y.shape == scores.shape
    testing.assert_close(y, refs[0], refs[1], "probs")
    (dx,) = torch.autograd.grad(y, x, dout)
    assert dx.dtype == dtype
    grads = []
    for ct in (torch.float64, dtype):
        yc, dy = y.detach().to(ct), dout.to(ct)
        grads.append(scale * yc * (dy - (dy * yc).sum(-1, keepdim=True)))
    testing.assert_close(dx, grads[0], grads[1], "dscores")
    return y


# Rows of 1, 17, 113, 257, 1000 and 1024 columns; several rows per program and ragged tails.
SHAPES = [(1, 1, 1, 1), (1, 2, 9, 17), (3, 1, 2, 113), (3, 1, 5, 257), (1, 1, 3, 1000), (1, 2, 8, 1024)]
SHAPE_IDS = ["1x1x1x1", "1x2x9x17", "3x1x2x113", "3x1x5x257", "1x1x3x1000", "1x2x8x1024"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_fwd_bwd(backend, dtype, shape):
    """Every mask kind, with and without causal."""
    scores = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
    for mask_kind, causal in [("none", False), ("bool", True), ("padding", False), ("additive", True)]:
        check_softmax(backend, scores, make_mask(mask_kind, shape, dtype), 0.7, causal, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("mask_kind", MASKS, ids=MASKS)
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 17, 33)], ids=SHAPE_IDS + ["2x3x17x33"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_full_grid(backend, dtype, shape, mask_kind, causal):
    scores = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
    check_softmax(backend, scores, make_mask(mask_kind, shape, dtype), 0.7, causal, dtype)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_16k_rows(backend, dtype, causal):
    """16384 columns, the longest row either backend holds in one tile (the CUDA kernel's row
    buffer is 64 KB of shared memory); the second row is padded after 9001 keys."""
    scores = (torch.randn(1, 1, 2, 16384, device=DEVICE) * 4).to(dtype)
    mask = torch.zeros(1, 1, 2, 16384, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1, 9001:] = True
    check_softmax(backend, scores, mask, 1.0, causal, dtype)


def check_fully_masked_rows(backend, dtype):
    """Rows whose every key is masked (all of batch 0's row 2, every row of batch 1) are 0;
    the others are checked against the reference. Returns ``(scores, output)``."""
    scores = torch.randn(2, 2, 4, 33, device=DEVICE).to(dtype)
    mask = torch.zeros(2, 1, 4, 33, dtype=torch.bool, device=DEVICE)
    mask[1] = True  # every row of batch 1
    mask[0, :, 2] = True  # one row of batch 0
    y = check_softmax(backend, scores, mask, 1.0, False, dtype)
    assert (y[1] == 0).all() and (y[0, :, 2] == 0).all()
    return scores, y


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_fully_masked_rows_are_zero(backend, dtype):
    scores, y = check_fully_masked_rows(backend, dtype)
    torch.testing.assert_close(y[0, :, [0, 1, 3]].float().sum(-1), torch.ones(2, 3), atol=1e-2, rtol=0)
    additive = torch.zeros(1, 1, 4, 33, device=DEVICE)
    additive[..., 1, :] = float("-inf")  # a float mask hiding a whole row
    y = check_softmax(backend, scores, additive.to(dtype), 0.5, False, dtype)
    assert (y[:, :, 1] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_broadcast_masks(backend, dtype):
    """Masks of fewer dims and of size-1 dims are read by zero strides: (Lk,), (Lq, Lk),
    (B, 1, 1, Lk), (1, H, Lq, 1) and a stride-0 expanded one."""
    scores = (torch.randn(2, 2, 3, 21, device=DEVICE) * 2).to(dtype)
    masks = [
        torch.rand(21, device=DEVICE) < 0.3,
        torch.rand(3, 21, device=DEVICE) < 0.3,
        torch.rand(2, 1, 1, 21, device=DEVICE) < 0.3,
        (torch.randn(1, 2, 3, 1, device=DEVICE)).to(dtype),
        (torch.randn(1, 1, 1, 21, device=DEVICE)).to(dtype).expand(2, 2, 3, 21),
    ]
    for mask in masks:
        check_softmax(backend, scores, mask, 0.8, True, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_strided_and_other_ranks(backend, dtype):
    """A transposed (non-contiguous) input is read by strides; 2-D, 3-D and 5-D inputs."""
    base = (torch.randn(1, 2, 20, 24, device=DEVICE) * 2).to(dtype)
    y = check_softmax(backend, base.transpose(-1, -2), None, 0.5, True, dtype)  # column stride != 1
    assert y.stride() == torch.empty_like(base.transpose(-1, -2)).stride()  # laid out as the op's fake says
    check_softmax(backend, (torch.randn(7, 45, device=DEVICE)).to(dtype), None, 1.3, True, dtype)
    check_softmax(backend, (torch.randn(3, 6, 45, device=DEVICE)).to(dtype),
                  torch.rand(6, 45, device=DEVICE) < 0.2, 1.0, False, dtype)
    check_softmax(backend, (torch.randn(2, 2, 3, 5, 19, device=DEVICE)).to(dtype),
                  torch.rand(2, 1, 1, 5, 19, device=DEVICE) < 0.2, 2.0, True, dtype)
    sliced = (torch.randn(4, 2, 3, 5, 30, device=DEVICE)).to(dtype)[::2, :, :, :, 3:22]  # no 4-D view
    check_softmax(backend, sliced, None, 1.0, False, dtype)


def test_softmax_nan_propagates_and_masked_positions_are_not_read(backend):
    scores = torch.randn(1, 1, 3, 50, device=DEVICE)
    scores[0, 0, 1, 7] = float("nan")
    y = fastattn.scaled_masked_softmax(scores, None, 1.0, False, backend=backend)
    assert torch.isnan(y[0, 0, 1]).all() and torch.isfinite(y[0, 0, [0, 2]]).all()
    mask = torch.zeros(1, 1, 3, 50, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1, 7] = True  # a masked-out NaN is never read
    y = fastattn.scaled_masked_softmax(scores, mask, 1.0, False, backend=backend)
    assert torch.isfinite(y).all()
    scores[0, 0, 0, 30] = float("nan")  # above the causal diagonal of row 0: never read either
    y = fastattn.scaled_masked_softmax(scores, mask, 1.0, True, backend=backend)
    assert torch.isfinite(y).all()
