"""Triton-specific softmax checks (the shared ones are tests/test_softmax.py): both kernel
variants — one tile per row, and the two-pass online kernel for long rows (forced on short
rows by lowering ``MAX_ROW_BLOCK``) — and that ``backend="triton"`` runs the kernel's
implementation. Without a GPU the kernels run on CPU tensors under the Triton interpreter.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import dispatch
from fastattn.kernels import softmax as kernels
from test_softmax import DEVICE, DTYPE_IDS, DTYPES, check_fully_masked_rows, check_softmax, make_mask
from triton_bf16_rounding import rounded_bf16_casts

pytestmark = [pytest.mark.requires_backend("triton"), pytest.mark.usefixtures("poisoned")]


@pytest.fixture(autouse=True)
def _rounded():
    """bf16 casts that round as the GPU does (the interpreter truncates: tests/triton_bf16_rounding.py)."""
    with rounded_bf16_casts():
        yield


@pytest.fixture(params=["tile", "looped"], ids=["tile", "looped"])
def variant(request, monkeypatch):
    """Run the test with one tile per row, or with the two-pass kernel over 16-column chunks."""
    if request.param == "looped":
        monkeypatch.setattr(kernels, "MAX_ROW_BLOCK", 0)
        monkeypatch.setattr(kernels, "LOOP_BLOCK", 16)
        monkeypatch.setattr(kernels, "LOOP_WARPS", 1)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_looped_kernel(dtype, monkeypatch):
    """The two-pass online kernel in 16-column chunks: the running max grows across chunks
    (the largest score sits in the last chunk, so the running sum must be rescaled), causal
    rows stop early, a row of one column, and every mask kind."""
    monkeypatch.setattr(kernels, "MAX_ROW_BLOCK", 0)
    monkeypatch.setattr(kernels, "LOOP_BLOCK", 16)
    monkeypatch.setattr(kernels, "LOOP_WARPS", 1)
    for shape, mask_kind, causal in [((1, 1, 1, 1), "none", False), ((1, 1, 5, 40), "bool", True),
                                     ((2, 1, 2, 37), "padding", False), ((1, 1, 3, 50), "additive", True)]:
        scores = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
        scores[..., -1] += 20
        check_softmax("triton", scores, make_mask(mask_kind, shape, dtype), 1.3, causal, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_longer_than_one_tile(dtype):
    """Rows of MAX_ROW_BLOCK + 5 columns take the looped kernel at its real chunk size."""
    lk = kernels.MAX_ROW_BLOCK + 5
    scores = (torch.randn(1, 1, 2, lk, device=DEVICE) * 4).to(dtype)
    mask = torch.zeros(1, 1, 2, lk, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1, 9001:] = True
    check_softmax("triton", scores, mask, 1.0, False, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_looped_kernel_fully_masked_rows_are_zero(dtype, variant):
    check_fully_masked_rows("triton", dtype)


def test_looped_kernel_nan_propagates_and_masked_positions_are_not_read(variant):
    scores = torch.randn(1, 1, 3, 50, device=DEVICE)
    scores[0, 0, 1, 7] = float("nan")
    y = fastattn.scaled_masked_softmax(scores, None, 1.0, False, backend="triton")
    assert torch.isnan(y[0, 0, 1]).all() and torch.isfinite(y[0, 0, [0, 2]]).all()
    mask = torch.zeros(1, 1, 3, 50, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1, 7] = True
    scores[0, 0, 0, 30] = float("nan")  # above the causal diagonal of row 0
    y = fastattn.scaled_masked_softmax(scores, mask, 1.0, True, backend="triton")
    assert torch.isfinite(y).all()


def test_softmax_row_sums_and_dispatch():
    """Rows that see a key sum to 1; backend="triton" is what ran (the implementation is the kernel's)."""
    impls = dispatch.implementations("softmax_fwd")
    assert impls["triton"].fn.__module__ == "fastattn.kernels.softmax"
    scores = torch.randn(2, 2, 9, 77, device=DEVICE) * 5
    y = fastattn.scaled_masked_softmax(scores, None, 1.0, True, backend="triton")
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 2, 9), atol=1e-5, rtol=0)
