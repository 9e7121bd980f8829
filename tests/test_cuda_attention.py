"""CUDA C++ tensor-core attention forward (csrc/cuda/attention) through the public API with
``backend="cuda"``, against :mod:`fastattn.reference` in float64.

Without a GPU the kernel runs on CPU tensors in the host SIMT runtime (``fastattn._cuda_sim``,
one OS thread per CUDA thread), so the default grid keeps sequences to a few query blocks
(128 rows at head dims 64 and 128, 64 at 256); the cross-product is marked slow. fp16/bf16 by flash-attn's error-ratio rule:
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
from fastattn.backends.cuda import attention as cuda_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_WHY = dispatch.unavailable_reason("cuda", torch.device(DEVICE))
pytestmark = [pytest.mark.skipif(_WHY is not None, reason=f"cuda backend: {_WHY}"), pytest.mark.usefixtures("poisoned")]

# fp16/bf16 only: the floor absorbs the fp32 accumulation of long rows.
FLOOR = 1e-4
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _flash_case(dtype, seqlen_q, seqlen_k, head_dim, causal, heads=2, heads_k=1, batch=1, window=(-1, -1),
                softcap=0.0, alibi=None):
    """flash layout (B, L, H, D), causal and window aligned bottom-right; checks out and lse."""
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE).to(dtype)
    k = torch.randn(batch, seqlen_k, heads_k, head_dim, device=DEVICE).to(dtype)
    v = torch.randn(batch, seqlen_k, heads_k, head_dim, device=DEVICE).to(dtype)
    kw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi, return_attn_probs=True)
    out, lse, _ = fastattn.flash_attn_func(q, k, v, backend="cuda", **kw)
    ref64, lse64, _ = reference.flash_attn_func(q.double(), k.double(), v.double(), **kw)
    ref_lp, lse_lp, _ = reference.flash_attn_func(q, k, v, **kw)
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
    """Several query blocks and key tiles (the K/V pipeline, block skipping), batch 2."""
    _flash_case(torch.float16, 257, 257, 64, True, heads=1, heads_k=1, batch=2)


# Each case has a query block with interior key tiles (no mask), diagonal tiles and a ragged
# tail tile, and a ragged last query block: head dim 64 (128 x 64 tiles), 128 (128 x 32) and
# 256 (64 x 32). Lq > Lk bottom-right leaves whole query blocks that see no key.
BLOCK_KINDS = [
    ("fp16", 200, 200, 64, True, "flash"), ("bf16", 150, 97, 128, False, "flash"),
    pytest.param("fp16", 300, 300, 64, True, "flash", marks=pytest.mark.slow),
    pytest.param("bf16", 330, 200, 64, True, "flash", marks=pytest.mark.slow),
    pytest.param("bf16", 200, 330, 64, True, "sdpa", marks=pytest.mark.slow),
    pytest.param("fp16", 170, 250, 128, True, "sdpa", marks=pytest.mark.slow),
    pytest.param("fp16", 100, 140, 256, True, "flash", marks=pytest.mark.slow),
]


def _kind_id(c) -> str:
    c = c.values if hasattr(c, "values") else c
    return f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-{'causal' if c[4] else 'full'}-{c[5]}".replace(" ", "")


@pytest.mark.parametrize("dt,lq,lk,d,causal,layout", BLOCK_KINDS,
                         ids=[_kind_id(c) for c in BLOCK_KINDS])
def test_interior_diagonal_and_tail_blocks(dt, lq, lk, d, causal, layout):
    """Interior, diagonal and ragged key tiles and ragged query blocks, both causal alignments."""
    case = _flash_case if layout == "flash" else _sdpa_case
    case(DTYPES[dt], lq, lk, d, causal, heads=2, heads_k=1)


# Head dims below the kernel's (64, 128, 256): zero-filled up to it in shared memory, the padded
# output columns never stored (the poisoned output shows any stray write or missing column).
PADDED = [("fp16", 8, True), ("bf16", 40, False), ("fp16", 96, True), ("bf16", 200, True)]


@pytest.mark.parametrize("dt,d,causal", PADDED, ids=[f"{c[0]}-d{c[1]}-{'causal' if c[2] else 'full'}" for c in PADDED])
def test_head_dims_padded_inside_the_kernel(dt, d, causal):
    _flash_case(DTYPES[dt], 70, 45, d, causal, heads=2, heads_k=1)


# Sliding windows (bottom-right aligned): key tiles left of every row's window skipped, tiles
# crossing either bound masked; rows whose window holds no key (Lq > Lk) give 0 and +inf.
WINDOWS = [
    ("fp16", 200, 200, 64, True, (50, 0)), ("bf16", 150, 90, 64, False, (20, 30)),
    ("fp16", 70, 200, 128, False, (10, -1)), ("bf16", 150, 60, 64, False, (-1, 5)),
    pytest.param("fp16", 100, 130, 256, True, (33, 0), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dt,lq,lk,d,causal,window", WINDOWS,
                         ids=[_kind_id(c) for c in WINDOWS])
def test_sliding_window(dt, lq, lk, d, causal, window):
    _flash_case(DTYPES[dt], lq, lk, d, causal, heads=2, heads_k=1, window=window)


@pytest.mark.parametrize("dt,d,causal,window,cap", [
    ("fp16", 64, True, (-1, -1), 5.0), ("bf16", 128, False, (16, 8), 2.0), ("fp16", 40, False, (-1, -1), 30.0),
], ids=["fp16-d64-causal-cap5", "bf16-d128-window-cap2", "fp16-d40-full-cap30"])
def test_softcap(dt, d, causal, window, cap):
    """Softcapping before the masks, with and without causal masks and windows."""
    _flash_case(DTYPES[dt], 90, 75, d, causal, heads=2, heads_k=1, window=window, softcap=cap)


@pytest.mark.parametrize("dt,d,causal,window,cap,per_batch", [
    ("fp16", 64, True, (-1, -1), 0.0, False), ("bf16", 128, False, (20, 10), 0.0, True),
    ("fp16", 96, False, (-1, -1), 10.0, False),
], ids=["fp16-d64-causal", "bf16-d128-window-per-batch", "fp16-d96-softcap"])
def test_alibi(dt, d, causal, window, cap, per_batch):
    """ALiBi slopes per head or per (batch, head), after the softcap and before the masks."""
    batch, heads = 2, 2
    shape = (batch, heads) if per_batch else (heads,)
    slopes = torch.rand(shape, device=DEVICE, dtype=torch.float32) * 0.5
    _flash_case(DTYPES[dt], 80, 100, d, causal, heads=heads, heads_k=1, batch=batch, window=window, softcap=cap,
                alibi=slopes)


def test_strided_inputs_taken_without_copy():
    """q/k/v as slices of a packed QKV buffer (non-contiguous head/seq strides)."""
    b, l, h, d = 1, 33, 2, 64
    qkv = torch.randn(b, l, 3, h, d, device=DEVICE).to(torch.bfloat16)
    q, k, v = qkv.unbind(2)
    out = fastattn.flash_attn_func(q, k, v, causal=True, backend="cuda")
    ref64 = reference.flash_attn_func(q.double(), k.double(), v.double(), causal=True)
    testing.assert_close(out, ref64, reference.flash_attn_func(q, k, v, causal=True), "out", floor=FLOOR)


def test_backward_is_served():
    """Gradients flow through backend="cuda" (the CUDA C++ backward, fed by this forward's out and
    lse: tests/test_cuda_attention_backward.py covers it) and meet the error-ratio rule against
    the float64 reference's gradients."""
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
    ("head dim", dict(d=100)), ("dtype", dict(dtype=torch.float32)),
], ids=["head_dim_100", "fp32"])
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
