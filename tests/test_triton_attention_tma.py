"""The Hopper (TMA) attention forward, fastattn.kernels.attention_tma, against the float64 reference.

Runs the kernel itself under the Triton interpreter (which executes tensor-descriptor loads and
stores, out-of-bounds zero fill and store clipping included) on CPU tensors, or on a GPU of
compute capability 9.x when one is present; its sm_90a machine code is checked by
tests/test_triton_aot.py like every other kernel. Shapes mix interior, diagonal and ragged
blocks (lengths not multiples of the tile, head dims not powers of two) and the flash-attn
layout ``(B, L, H, D).transpose(1, 2)``; every output buffer is poisoned with NaN.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from fastattn import reference, testing
from fastattn.attention_args import AttentionArgs

tma = pytest.importorskip("fastattn.kernels.attention_tma")
attention = pytest.importorskip("fastattn.kernels.attention")


def _fwd_tma(q, k, v, args, **kw):
    return attention.attention_fwd(q, k, v, args, path="tma", **kw)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

if torch.cuda.is_available():
    DEVICE = "cuda"
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs compute capability 9.0 or newer; this GPU is older", allow_module_level=True)
elif os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = "cpu"
else:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


@pytest.fixture(autouse=True)
def _poison(poisoned):
    yield


def _inputs(b, hq, hk, lq, lk, d, dtype, flash_layout, seed):
    """q (B, Hq, Lq, D), k, v (B, Hk, Lk, D); with ``flash_layout`` views of (B, L, H, D) tensors."""
    def one(h, n, s):
        if flash_layout:
            return testing.randn(b, n, h, d, dtype=dtype, seed=s, device=DEVICE).transpose(1, 2)
        return testing.randn(b, h, n, d, dtype=dtype, seed=s, device=DEVICE)

    return one(hq, lq, seed), one(hk, lk, seed + 1), one(hk, lk, seed + 2)


def _check(q, k, v, args, **kw):
    out, lse = _fwd_tma(q, k, v, args, **kw)
    assert out.stride() == q.stride()  # written in place by the descriptor, in q's layout
    with torch.no_grad():
        ref64, lse64 = reference.attention(q.double(), k.double(), v.double(), args, **{
            name: (t.double() if name == "attn_mask" and t.is_floating_point() else t) for name, t in kw.items()})
        lowp, _ = reference.attention(q, k, v, args, **kw)
    testing.assert_close(out, ref64, None if q.dtype == F32 else lowp, name="out")
    testing.assert_close(lse, lse64, None, name="lse")
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride() == q.stride()
    return out


# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim, dtype, flash layout, args)
RUNS = [
    (1, 4, 2, 150, 200, 64, F16, True, dict(causal=True, bottom_right=True)),
    (2, 2, 1, 200, 130, 40, BF16, False, dict(causal=True)),
    (1, 2, 2, 97, 257, 32, F32, True, dict()),
    (1, 3, 1, 190, 230, 16, F16, False, dict(causal=True, bottom_right=True, window_left=70)),
    (1, 2, 2, 160, 160, 24, BF16, True, dict(window_left=50, window_right=30)),
    (1, 2, 1, 140, 140, 32, F16, False, dict(causal=True, softcap=5.0)),
]


@pytest.mark.parametrize("run", RUNS, ids=[f"{r[3]}x{r[4]}-d{r[5]}-{r[6]}-{'-'.join(r[8]) or 'full'}"
                                           for r in RUNS])
def test_forward_matches_reference(run):
    b, hq, hk, lq, lk, d, dtype, flash_layout, kw = run
    q, k, v = _inputs(b, hq, hk, lq, lk, d, dtype, flash_layout, seed=11)
    _check(q, k, v, AttentionArgs(scale=1 / math.sqrt(d), **kw))


def test_alibi_mask_and_negative_scale():
    """ALiBi slopes, a boolean mask broadcast over heads, an additive mask, and a negative scale
    (the launcher negates q so that the kernel's FMA fold may assume a positive one)."""
    q, k, v = _inputs(2, 4, 2, 70, 90, 32, F16, True, seed=21)
    slopes = torch.rand(4, device=DEVICE) * 0.3
    _check(q, k, v, AttentionArgs(scale=0.2, causal=True, bottom_right=True), alibi_slopes=slopes)
    gen = torch.Generator().manual_seed(5)
    keep = (torch.rand(2, 1, 70, 90, generator=gen) > 0.3).to(DEVICE)
    _check(q, k, v, AttentionArgs(scale=0.2), attn_mask=keep)
    bias = torch.randn(1, 4, 70, 90, generator=gen).to(DEVICE)
    _check(q, k, v, AttentionArgs(scale=0.2, causal=True), attn_mask=bias)
    _check(q, k, v, AttentionArgs(scale=-0.3, causal=True, bottom_right=True))
    # Scores spanning hundreds in base 2: a running max taken as if the scale were positive
    # would overflow exp2.
    _check(q, k, v, AttentionArgs(scale=-8.0, causal=True))


def test_dropout_equals_the_pointer_kernel():
    """Dropout draws the very mask of the pointer kernel (the same Philox counters): the two
    forwards agree to rounding, and neither equals the undropped result."""
    q, k, v = _inputs(1, 2, 2, 80, 100, 32, F32, True, seed=31)
    args = AttentionArgs(scale=0.2, causal=True, dropout_p=0.3, seed=1234, offset=64)
    got, lse = _fwd_tma(q, k, v, args)
    want, want_lse = attention.attention_fwd(q, k, v, args, path="pointer")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    plain, _ = _fwd_tma(q, k, v, AttentionArgs(scale=0.2, causal=True))
    assert (got - plain).abs().max() > 1e-2


def test_rows_without_keys():
    """Bottom-right causal with more queries than keys: the first rows see no key (0 and +inf),
    at the widest head dim sent here."""
    q, k, v = _inputs(1, 2, 1, 60, 40, 128, BF16, False, seed=41)
    out = _check(q, k, v, AttentionArgs(scale=0.09, causal=True, bottom_right=True))
    assert torch.equal(out[:, :, :20], torch.zeros_like(out[:, :, :20]))


def test_which_calls_take_the_tma_path():
    """sm_90+ GPUs, not varlen, head dim <= 128 (fp32: 64), tensors TMA can address; all else the pointer kernel."""
    x = torch.randn(1, 2, 8, 64, dtype=F16)
    assert tma.uses_tma(x, x, x, x, arch=90, on_gpu=True, varlen=False)
    assert not tma.uses_tma(x, x, x, x, arch=89, on_gpu=True, varlen=False)
    assert not tma.uses_tma(x, x, x, x, arch=90, on_gpu=False, varlen=False)
    assert not tma.uses_tma(x, x, x, x, arch=90, on_gpu=True, varlen=True)
    wide = torch.randn(1, 2, 8, 256, dtype=F16)
    assert not tma.uses_tma(wide, wide, wide, wide, arch=90, on_gpu=True, varlen=False)
    fp32 = torch.randn(1, 2, 8, 128, dtype=F32)
    assert not tma.uses_tma(fp32, fp32, fp32, fp32, arch=90, on_gpu=True, varlen=False)
    assert tma.uses_tma(fp32[..., :64], fp32[..., :64], fp32[..., :64], x.float(), arch=90, on_gpu=True,
                        varlen=False)
    odd = torch.randn(1, 2, 8, 12, dtype=F16)
    assert not tma.uses_tma(odd, odd, odd, odd, arch=90, on_gpu=True, varlen=False)


def test_tma_compatibility_rule():
    """What TMA can address: unit stride on the head dim, 16-byte strides and base address."""
    x = torch.randn(2, 8, 3, 64, dtype=F16)
    assert tma.tma_compatible(x, x.transpose(1, 2))
    assert not tma.tma_compatible(torch.randn(2, 3, 8, 12, dtype=F16))  # 24-byte rows
    assert not tma.tma_compatible(x[..., 1:33])  # base address 2 bytes off
    assert not tma.tma_compatible(x.transpose(2, 3))  # head dim not contiguous
    assert tma.tma_compatible(torch.randn(1, 2, 5, 4, dtype=F32))  # 16-byte fp32 rows
    assert not tma.tma_compatible(torch.randn(1, 1, 8, 64, dtype=F16).expand(2, 3, 8, 64))  # broadcast heads
    bad = torch.randn(1, 2, 8, 12, dtype=F16, device=DEVICE)
    with pytest.raises(ValueError, match="16-byte aligned"):
        _fwd_tma(bad, bad, bad, AttentionArgs(scale=0.3))
    wide = torch.randn(1, 2, 8, 256, dtype=F16, device=DEVICE)
    with pytest.raises(ValueError, match="head dim 256"):
        _fwd_tma(wide, wide, wide, AttentionArgs(scale=0.3))
    with pytest.raises(ValueError, match="path"):
        attention.attention_fwd(wide, wide, wide, AttentionArgs(scale=0.3), path="fast")
