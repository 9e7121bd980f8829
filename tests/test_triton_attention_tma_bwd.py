"""The Hopper (TMA) attention backward, fastattn.kernels.attention_tma_bwd, against the float64 reference.

Runs the kernels themselves (``attention_bwd(..., path="tma")``) under the Triton interpreter
(tensor-descriptor loads with their zero fill, clipped stores and the bulk fp32 reduction of
atomic dQ: kernels/_interpreter.py supplies the last) on CPU tensors, or on a GPU of compute
capability 9.x when one is present; their sm_90a machine code is checked by
tests/test_triton_aot.py like every other kernel. Under the interpreter dK/dV runs 32-row x
64-key tiles and dQ 64 x 32, so the shapes below hold interior, causal-diagonal, window-edge
and ragged blocks on both sides (lengths not multiples of the tiles, head dims not powers of
two); every output buffer is poisoned with NaN. Both dQ modes (atomic and deterministic) run
in every case. fp16/bf16 (the dtypes served: fp32 runs the pointer kernels) by flash-attn's
error-ratio rule.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastattn import reference, testing
from fastattn.attention_args import AttentionArgs, dropout_keep_mask
from attention_cases import assert_close, reference_fwd_bwd

tma_bwd = pytest.importorskip("fastattn.kernels.attention_tma_bwd")
attention = pytest.importorskip("fastattn.kernels.attention")

# The device rule (interpreter on CPU, else a 9.x GPU: the module skips otherwise) and the inputs
# of the TMA forward's tests.
from test_triton_attention_tma import DEVICE, _inputs  # noqa: E402

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


@pytest.fixture(autouse=True)
def _poison(poisoned):
    yield


def _compare(grads, q, k, v, args, dout, ref_kw):
    """dq, dk, dv against the float64 reference and the same math in the input dtype (the
    error-ratio rule); ``ref_kw`` the reference's optional inputs."""
    ref64 = reference_fwd_bwd(q, k, v, args, dout, upcast=True, **ref_kw)[2:]
    lowp = reference_fwd_bwd(q, k, v, args, dout, upcast=False, **ref_kw)[2:]
    for name, got, want, rl in zip(("dq", "dk", "dv"), grads, ref64, lowp):
        assert got.shape == want.shape and got.dtype == q.dtype, name
        assert_close(name, got, want, rl, dtype=q.dtype)


def _check(q, k, v, args, **kw):
    """The TMA backward in both dQ modes against the reference, for one fresh ``dout``."""
    out, lse = attention.attention_fwd(q, k, v, args, **kw)
    dout = testing.randn(*out.shape, dtype=q.dtype, seed=99, device=DEVICE)
    for deterministic in (False, True):
        a = AttentionArgs(**{**vars(args), "deterministic": deterministic})
        grads = attention.attention_bwd(dout, q, k, v, out, lse, a, path="tma", **kw)
        for g, t in zip(grads, (q, k, v)):
            assert g.stride() == t.stride()  # written in place by the descriptors, in the input's layout
        _compare(grads, q, k, v, a, dout, kw)


# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim, dtype, flash layout, args)
RUNS = [
    (1, 4, 2, 150, 200, 64, F16, True, dict(causal=True, bottom_right=True)),
    (2, 2, 1, 140, 100, 40, BF16, False, dict(causal=True)),
    (1, 2, 2, 97, 150, 32, F16, True, dict()),
    (1, 3, 1, 130, 170, 16, F16, False, dict(causal=True, bottom_right=True, window_left=70)),
]
SLOW_RUNS = [
    (1, 2, 2, 160, 160, 24, BF16, True, dict(window_left=50, window_right=30)),
    (1, 2, 1, 140, 140, 32, F16, False, dict(causal=True, softcap=5.0)),
    (1, 2, 1, 130, 130, 64, BF16, True, dict(causal=True)),
    (1, 2, 2, 100, 140, 48, BF16, False, dict(causal=True, bottom_right=True)),
]


def _run_id(r):
    return f"{r[3]}x{r[4]}-d{r[5]}-{str(r[6])[6:]}-{'-'.join(r[8]) or 'full'}"


@pytest.mark.parametrize("run", RUNS, ids=[_run_id(r) for r in RUNS])
def test_backward_matches_reference(run):
    b, hq, hk, lq, lk, d, dtype, flash_layout, kw = run
    q, k, v = _inputs(b, hq, hk, lq, lk, d, dtype, flash_layout, seed=11)
    _check(q, k, v, AttentionArgs(scale=1 / math.sqrt(d), **kw))


@pytest.mark.slow
@pytest.mark.parametrize("run", SLOW_RUNS, ids=[_run_id(r) for r in SLOW_RUNS])
def test_backward_matches_reference_slow(run):
    test_backward_matches_reference(run)


def test_alibi_softcap_additive_mask_and_negative_scale():
    """ALiBi with softcap and a window, an additive mask (with its row-statistics pass), and a
    negative scale, in one GQA shape."""
    q, k, v = _inputs(1, 4, 2, 70, 90, 32, F16, True, seed=21)
    slopes = torch.rand(4, device=DEVICE) * 0.3
    _check(q, k, v, AttentionArgs(scale=0.2, causal=True, bottom_right=True, softcap=4.0, window_left=40),
           alibi_slopes=slopes)
    bias = torch.randn(1, 4, 70, 90, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    _check(q, k, v, AttentionArgs(scale=-0.3, causal=True), attn_mask=bias)


@pytest.mark.slow
def test_bool_mask_and_rows_without_keys():
    """A boolean mask broadcast over heads; bottom-right causal with more queries than keys
    (the first rows see no key: zero gradients), at the widest head dim sent here."""
    q, k, v = _inputs(2, 2, 2, 70, 90, 32, F16, False, seed=23)
    keep = (torch.rand(2, 1, 70, 90, generator=torch.Generator().manual_seed(6)) > 0.3).to(DEVICE)
    _check(q, k, v, AttentionArgs(scale=0.2), attn_mask=keep)
    q, k, v = _inputs(1, 2, 1, 60, 40, tma_bwd.TMA_BWD_MAX_HEAD_DIM[2], BF16, False, seed=41)
    _check(q, k, v, AttentionArgs(scale=0.09, causal=True, bottom_right=True))


def test_dropout_and_mask_gradient():
    """Dropout with the specified keep mask (the pointer kernels' Philox stream, drawn here on
    transposed tiles), and the additive mask's gradient under dropout and a window, against the
    closed-form reference in float64 and in the input dtype (the error-ratio rule); both dQ modes."""
    q, k, v = _inputs(1, 2, 1, 70, 90, 32, F16, True, seed=31)
    mask = torch.randn(1, 2, 70, 90, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    base = dict(scale=0.2, bottom_right=True, window_left=30, window_right=7, dropout_p=0.25, seed=99, offset=32)
    out, lse = attention.attention_fwd(q, k, v, AttentionArgs(**base), attn_mask=mask)
    dout = testing.randn(*out.shape, dtype=F16, seed=5, device=DEVICE)
    for deterministic in (False, True):
        args = AttentionArgs(**base, deterministic=deterministic)
        keep = dropout_keep_mask(q, k, args)
        assert 0 < keep.float().mean() < 1
        *grads, dmask = attention.attention_bwd(dout, q, k, v, out, lse, args, attn_mask=mask, mask_grad=True,
                                                path="tma")
        ref64, lowp = (reference.attention_backward(dout, q, k, v, args, attn_mask=mask, dropout_mask=keep,
                                                    upcast=upcast, return_mask_grad=True) for upcast in (True, False))
        for name, got, r64, rl in zip(("dq", "dk", "dv", "dmask"), (*grads, dmask), ref64, lowp):
            assert_close(name, got, r64, rl, dtype=F16)


def test_which_calls_take_the_tma_path():
    """sm_90+ GPUs, what the TMA forward serves, and a dout TMA can address; all else the pointer kernels."""
    x = torch.randn(1, 2, 8, 64, dtype=F16)
    assert tma_bwd.uses_tma(x, x, x, x, x, arch=90, on_gpu=True, varlen=False)
    assert not tma_bwd.uses_tma(x, x, x, x, x, arch=89, on_gpu=True, varlen=False)
    assert not tma_bwd.uses_tma(x, x, x, x, x, arch=90, on_gpu=False, varlen=False)
    assert not tma_bwd.uses_tma(x, x, x, x, x, arch=90, on_gpu=True, varlen=True)
    ones = torch.ones(1, dtype=F16).expand(1, 2, 8, 64)  # autograd's gradient of a sum: zero strides
    assert not tma_bwd.uses_tma(x, x, x, x, ones, arch=90, on_gpu=True, varlen=False)
    assert tma_bwd.uses_tma(x, x, x, x, ones.contiguous(), arch=90, on_gpu=True, varlen=False)
    strided = torch.randn(1, 2, 8, 128, dtype=F16)[..., ::2]
    assert not tma_bwd.uses_tma(x, x, x, x, strided, arch=90, on_gpu=True, varlen=False)
    wide = torch.randn(1, 2, 8, 128, dtype=F16)  # the forward's TMA kernel serves it, the backward's not
    assert not tma_bwd.uses_tma(wide, wide, wide, wide, wide, arch=90, on_gpu=True, varlen=False)
    fp32 = torch.randn(1, 2, 8, 32, dtype=F32)  # the forward's TMA kernel serves it, the backward's not
    assert not tma_bwd.uses_tma(fp32, fp32, fp32, fp32, fp32, arch=90, on_gpu=True, varlen=False)


def test_path_argument():
    """``path="tma"`` refuses what the kernels cannot serve, naming why; an unknown path is refused."""
    q, k, v = _inputs(1, 2, 2, 8, 8, 64, F16, False, seed=1)
    args = AttentionArgs(scale=0.3)
    out, lse = attention.attention_fwd(q, k, v, args)
    strided = testing.randn(1, 2, 8, 128, dtype=F16, seed=2, device=DEVICE)[..., ::2]
    with pytest.raises(ValueError, match="dout"):
        attention.attention_bwd(strided, q, k, v, out, lse, args, path="tma")
    wide = testing.randn(1, 2, 8, 128, dtype=F16, seed=3, device=DEVICE)
    with pytest.raises(ValueError, match="head dim 128"):
        attention.attention_bwd(wide, wide, wide, wide, wide, lse, args, path="tma")
    fp32 = testing.randn(1, 2, 8, 32, dtype=F32, seed=4, device=DEVICE)
    with pytest.raises(ValueError, match="float32"):
        attention.attention_bwd(fp32, fp32, fp32, fp32, fp32, lse, args, path="tma")
    with pytest.raises(ValueError, match="path"):
        attention.attention_bwd(out, q, k, v, out, lse, args, path="fast")
