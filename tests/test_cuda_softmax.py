"""CUDA C++ fused scale-mask-softmax (csrc/cuda/softmax) through ``backend="cuda"``,
against fastattn.reference.scaled_masked_softmax in float64 (Megatron-LM
FusedScaleMaskSoftmax semantics: bool mask True = masked out, float mask added after
scaling, causal top-left, fully masked rows give 0).

Without a GPU the kernels run on CPU tensors in the host SIMT runtime (csrc/sim).
Tolerances: fp32 1e-5 absolute (probabilities are <= 1); fp16/bf16 flash-attn's rule.
Outputs are poisoned with NaN before the kernel writes them.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import dispatch, reference, testing

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("cuda", torch.device(DEVICE)) is not None,
                                reason=f"cuda backend: {dispatch.unavailable_reason('cuda', torch.device(DEVICE))}")
pytestmark = [pytestmark, pytest.mark.usefixtures("poisoned")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def _mask(kind, shape, dtype):
    """A mask broadcastable to ``shape`` (B, H, Lq, Lk) of the given kind."""
    b, _, lq, lk = shape
    if kind == "none":
        return None
    if kind == "bool":  # Megatron's (B, 1, Lq, Lk), True = masked out
        return torch.rand(b, 1, lq, lk, device=DEVICE) < 0.3
    if kind == "padding":  # (B, 1, 1, Lk): the last keys of each batch padded; batch 0 fully padded
        lengths = torch.randint(1, lk + 1, (b,))
        lengths[0] = 0
        return torch.arange(lk).view(1, 1, 1, lk) >= lengths.view(b, 1, 1, 1)
    additive = torch.randn(1, 1, lq, lk, device=DEVICE) * 2  # float, added after scaling
    additive[..., :: 3] = float("-inf")
    return additive.to(dtype)


def check_softmax(scores, mask, scale, causal, dtype):
    """Forward against the reference; backward against dx = scale * y * (dy - sum(dy * y))
    evaluated on the reference's y (autograd through the reference gives NaN on fully
    masked rows, whose true gradient is 0)."""
    dout = torch.randn(scores.shape, device=DEVICE).to(dtype)
    results = []
    for ct in (torch.float64, dtype):
        m = mask if mask is None or mask.dtype == torch.bool else mask.to(ct)
        y = reference.scaled_masked_softmax(scores.to(ct), m, scale, causal, upcast=ct == torch.float64).to(ct)
        dy = dout.to(ct)
        results.append((y, scale * y * (dy - (dy * y).sum(-1, keepdim=True))))
    (y64, dx64), (ylp, dxlp) = results
    x = scores.detach().requires_grad_()
    y = fastattn.scaled_masked_softmax(x, mask, scale, causal, backend="cuda")
    assert y.dtype == dtype
    testing.assert_close(y, y64, ylp, "probs")
    (dx,) = torch.autograd.grad(y, x, dout)
    testing.assert_close(dx, dx64, dxlp, "dscores")
    return y


SHAPES = [(1, 1, 1, 1), (2, 3, 17, 113), (1, 2, 8, 1024), (3, 1, 5, 257)]
SHAPE_IDS = ["1x1x1x1", "2x3x17x113", "1x2x8x1024", "3x1x5x257"]
MASKS = ["none", "bool", "padding", "additive"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("mask_kind", MASKS, ids=MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_fwd_bwd(dtype, shape, mask_kind, causal):
    scores = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
    check_softmax(scores, _mask(mask_kind, shape, dtype), 0.7, causal, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_longest_row(dtype):
    """16k columns: the row buffer is 64 KB of shared memory, 256 threads x 8 chunks each."""
    scores = (torch.randn(1, 1, 2, 16384, device=DEVICE) * 4).to(dtype)
    mask = torch.zeros(1, 1, 2, 16384, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1, 9001:] = True  # the second row is padded after 9001 keys
    check_softmax(scores, mask, 1.0, False, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_fully_masked_rows_are_zero(dtype):
    scores = torch.randn(2, 2, 4, 33, device=DEVICE).to(dtype)
    mask = torch.zeros(2, 1, 4, 33, dtype=torch.bool, device=DEVICE)
    mask[1] = True  # every row of batch 1
    mask[0, :, 2] = True  # one row of batch 0
    y = check_softmax(scores, mask, 1.0, False, dtype)
    assert (y[1] == 0).all() and (y[0, :, 2] == 0).all()
    torch.testing.assert_close(y[0, :, [0, 1, 3]].float().sum(-1), torch.ones(2, 3), atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_strided_and_other_ranks(dtype):
    """A transposed (non-contiguous) input is read by strides; 2-D, 3-D and 5-D inputs."""
    base = (torch.randn(2, 3, 40, 24, device=DEVICE) * 2).to(dtype)
    check_softmax(base.transpose(-1, -2), None, 0.5, True, dtype)  # k stride != 1
    check_softmax((torch.randn(7, 45, device=DEVICE)).to(dtype), None, 1.3, True, dtype)
    check_softmax((torch.randn(3, 6, 45, device=DEVICE)).to(dtype),
                  torch.rand(6, 45, device=DEVICE) < 0.2, 1.0, False, dtype)
    check_softmax((torch.randn(2, 2, 3, 5, 19, device=DEVICE)).to(dtype),
                  torch.rand(2, 1, 1, 5, 19, device=DEVICE) < 0.2, 2.0, True, dtype)


def test_softmax_nan_propagates_like_torch():
    scores = torch.randn(1, 1, 3, 50, device=DEVICE)
    scores[0, 0, 1, 7] = float("nan")
    y = fastattn.scaled_masked_softmax(scores, None, 1.0, False, backend="cuda")
    assert torch.isnan(y[0, 0, 1]).all() and torch.isfinite(y[0, 0, [0, 2]]).all()
    # a masked-out NaN is never read
    mask = torch.zeros(1, 1, 3, 50, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1, 7] = True
    y = fastattn.scaled_masked_softmax(scores, mask, 1.0, False, backend="cuda")
    assert torch.isfinite(y).all()
