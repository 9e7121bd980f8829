"""CUDA C++ tensor-core attention forward (csrc/cuda/attention) through the public API with
``backend="cuda"``, against :mod:`fastattn.reference` in float64.

Without a GPU the kernel runs on CPU tensors in the host SIMT runtime (``fastattn._cuda_sim``,
one OS thread per CUDA thread), so the default grid keeps sequences to one or two 64-row
query blocks; the cross-product is marked slow. fp16/bf16 by flash-attn's error-ratio rule:
``max|out - ref64| <= 2 * max|ref_lowp - ref64| + floor`` with ``ref_lowp`` the reference
computed in the input dtype (``upcast=False``). Outputs are allocated poisoned (NaN) so an
unwritten element fails.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import dispatch, reference, testing
from fastattn.backends import cuda_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_WHY = dispatch.unavailable_reason("cuda", torch.device(DEVICE))
pytestmark = [pytest.mark.skipif(_WHY is not None, reason=f"cuda backend: {_WHY}"), pytest.mark.usefixtures("poisoned")]

# fp16/bf16 only: the floor absorbs the fp32 accumulation of long rows.
FLOOR = 1e-4
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _flash_case(dtype, seqlen_q, seqlen_k, head_dim, causal, heads=2, heads_k=1, batch=1):
    """flash layout (B, L, H, D), causal aligned bottom-right; checks out and lse."""
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE).to(dtype)
    k = torch.randn(batch, seqlen_k, heads_k, head_dim, device=DEVICE).to(dtype)
    v = torch.randn(batch, seqlen_k, heads_k, head_dim, device=DEVICE).to(dtype)
    out, lse, _ = fastattn.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend="cuda")
    ref64, lse64, _ = reference.flash_attn_func(q.double(), k.double(), v.double(), causal=causal,
                                                return_attn_probs=True)
    ref_lp, lse_lp, _ = reference.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    testing.assert_close(out, ref64, ref_lp, "out", floor=FLOOR)
    testing.assert_close(lse, lse64, lse_lp, "lse", floor=FLOOR)


def _sdpa_case(dtype, seqlen_q, seqlen_k, head_dim, causal, heads=2, heads_k=2, batch=1):
    """SDPA layout (B, H, L, D), causal aligned top-left; GQA through enable_gqa."""
    q = torch.randn(batch, heads, seqlen_q, head_dim, device=DEVICE).to(dtype)
    k = torch.randn(batch, heads_k, seqlen_k, head_dim, device=DEVICE).to(dtype)
    v = torch.randn(batch, heads_k, seqlen_k, head_dim, device=DEVICE).to(dtype)
    gqa = heads != heads_k
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa, backend="cuda")
    ref64 = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal,
                                                   enable_gqa=gqa)
    ref_lp = reference.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    testing.assert_close(out, ref64, ref_lp, "out", floor=FLOOR)


# Seqlens 1, 17, 113 (masked tails inside one or two 64-row blocks), Lq != Lk both ways so that
# the bottom-right alignment leaves rows that see no key (Lq > Lk, causal).
FAST_FLASH = [
    ("fp16", 1, 1, 64, False), ("fp16", 17, 17, 64, True), ("fp16", 113, 17, 64, True),
    ("fp16", 17, 113, 64, True), ("fp16", 64, 113, 64, False), ("bf16", 17, 113, 64, True),
    ("bf16", 128, 128, 64, False),
    ("bf16", 65, 17, 128, True), ("fp16", 17, 40, 128, False), ("bf16", 17, 33, 256, True),
]


@pytest.mark.parametrize("dt,lq,lk,d,causal", FAST_FLASH,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-{'causal' if c[4] else 'full'}" for c in FAST_FLASH])
def test_flash_layout_bottom_right(dt, lq, lk, d, causal):
    _flash_case(DTYPES[dt], lq, lk, d, causal)


FAST_SDPA = [
    ("fp16", 17, 113, 64, True, 4, 2), ("bf16", 113, 113, 64, True, 2, 1), ("fp16", 113, 17, 64, True, 2, 2),
    ("bf16", 17, 17, 128, False, 3, 1),
]


@pytest.mark.parametrize("dt,lq,lk,d,causal,h,hk", FAST_SDPA,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-{'causal' if c[4] else 'full'}-h{c[5]}kv{c[6]}"
                              for c in FAST_SDPA])
def test_sdpa_layout_top_left_gqa(dt, lq, lk, d, causal, h, hk):
    _sdpa_case(DTYPES[dt], lq, lk, d, causal, heads=h, heads_k=hk)


def test_seqlen_257_several_blocks():
    """Several query blocks and key tiles (double buffering, block skipping), batch 2."""
    _flash_case(torch.float16, 257, 257, 64, True, heads=1, heads_k=1, batch=2)


def test_strided_inputs_taken_without_copy():
    """q/k/v as slices of a packed QKV buffer (non-contiguous head/seq strides)."""
    b, l, h, d = 1, 33, 2, 64
    qkv = torch.randn(b, l, 3, h, d, device=DEVICE).to(torch.bfloat16)
    q, k, v = qkv.unbind(2)
    out = fastattn.flash_attn_func(q, k, v, causal=True, backend="cuda")
    ref64 = reference.flash_attn_func(q.double(), k.double(), v.double(), causal=True)
    testing.assert_close(out, ref64, reference.flash_attn_func(q, k, v, causal=True), "out", floor=FLOOR)


def test_backward_is_served():
    """Gradients flow through backend="cuda" (Triton or reference backward, fed by this forward's
    out and lse) and meet the error-ratio rule against the float64 reference's gradients."""
    q, k, v = (torch.randn(1, 2, 17, 64, device=DEVICE).to(torch.float16).requires_grad_() for _ in range(3))
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True, backend="cuda")
    dout = torch.randn_like(out)
    out.backward(dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference.scaled_dot_product_attention(q64, k64, v64, is_causal=True).backward(dout.double())
    qlp, klp, vlp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    reference.scaled_dot_product_attention(qlp, klp, vlp, is_causal=True).backward(dout)
    for name, g, g64, glp in (("dq", q.grad, q64.grad, qlp.grad), ("dk", k.grad, k64.grad, klp.grad),
                              ("dv", v.grad, v64.grad, vlp.grad)):
        assert g is not None, name
        testing.assert_close(g, g64, glp, name, floor=FLOOR)


@pytest.mark.parametrize("why,kwargs", [
    ("head dim", dict(d=96)), ("dtype", dict(dtype=torch.float32)), ("window", dict(window=(8, 0))),
    ("softcap", dict(softcap=5.0)),
], ids=["head_dim_96", "fp32", "window", "softcap"])
def test_supports_declines_uncovered_inputs(why, kwargs):
    """What the kernel does not compute is declined (so explicit backend="cuda" raises, auto falls back)."""
    d = kwargs.get("d", 64)
    q = torch.randn(1, 8, 2, d, device=DEVICE).to(kwargs.get("dtype", torch.float16))
    with pytest.raises(ValueError, match="backend='cuda'"):
        fastattn.flash_attn_func(q, q, q, window_size=kwargs.get("window", (-1, -1)),
                                 softcap=kwargs.get("softcap", 0.0), backend="cuda")


def test_supports_declines_misaligned_rows():
    base = torch.randn(1 * 4 * 2 * 64 + 1, device=DEVICE).to(torch.float16)
    q = base[1:].view(1, 4, 2, 64)  # 2-byte offset: rows not 16-byte aligned
    assert cuda_attention.supports(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2)) is not None


# 1024 only at head dim 64: the simulator runs one OS thread per CUDA thread, and a 1024 x 1024
# head-dim-256 case is ~1000 key-tile steps of 16 keys.
SLOW = [(dt, lq, lk, d, causal) for dt in ("fp16", "bf16") for d in (64, 128, 256)
        for (lq, lk) in ((1, 257), (113, 113), (257, 128), (128, 257)) for causal in (False, True)]
SLOW += [(dt, 1024, 1024, 64, causal) for dt in ("fp16", "bf16") for causal in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("dt,lq,lk,d,causal", SLOW,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-{'causal' if c[4] else 'full'}" for c in SLOW])
def test_flash_layout_full_grid(dt, lq, lk, d, causal):
    _flash_case(DTYPES[dt], lq, lk, d, causal, heads=1, heads_k=1)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_layout_257_gqa(causal):
    _sdpa_case(torch.bfloat16, 257, 257, 128, causal, heads=4, heads_k=2)
