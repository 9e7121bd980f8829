"""Attention dropout in the Triton kernels (kernels/attention.py): what only this backend has. The
checks every dropout backend shares are in tests/test_dropout.py; here, against the float64
reference run with fastattn.philox's keep mask (fastattn.testing's rule): ALiBi with a float mask,
varlen with ALiBi, the deterministic backward; the mask read back exactly (``v = I`` makes
``out = P * Z``) against its keep rate and its counters; the public API's draws
(``flash_attn_func``, ``S_dmask``, SDPA). Runs on CUDA tensors with a GPU, else under the Triton
interpreter.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import reference, testing
from fastattn.attention_args import AttentionArgs, draw_dropout_seed, dropout_keep_mask
from attention_cases import DEVICE, check_with_the_same_mask, dropout_args, qkv

kernels = pytest.importorskip("fastattn.kernels.attention")
pytestmark = [pytest.mark.requires_backend("triton"), pytest.mark.usefixtures("poisoned")]
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
DTYPES, DTYPE_IDS = [F16, BF16, F32], ["fp16", "bf16", "fp32"]


def _randn(*shape, dtype, seed):
    return testing.randn(*shape, dtype=dtype, seed=seed, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dropout_with_alibi_and_float_mask(dtype):
    q, k, v = qkv(2, 2, 2, 40, 70, 32, dtype, seed=5)
    slopes = (torch.rand(2, 2, generator=torch.Generator().manual_seed(1)) * 0.2).to(DEVICE)
    pad = torch.zeros(2, 1, 1, 70, device=DEVICE, dtype=dtype)
    pad[0, ..., 50:] = float("-inf")
    pad[1, ..., :3] = -2.0
    check_with_the_same_mask("triton", q, k, v, dropout_args(32, 0.2, seed=2**40 + 17), alibi_slopes=slopes,
                             attn_mask=pad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dropout_varlen_causal_alibi(dtype):
    """Varlen draws sequence s's mask from the (n, H, max_Lq, max_Lk) counter space."""
    lens_q, lens_k = [5, 67, 1, 40], [9, 67, 30, 33]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q, k, v = qkv(1, 4, 2, sum(lens_q), sum(lens_k), 32, dtype, seed=8)
    slopes = (torch.rand(4, generator=torch.Generator().manual_seed(2)) * 0.3).to(DEVICE)
    args = dropout_args(32, 0.25, seed=42, causal=True, bottom_right=True, max_seqlen_q=max(lens_q),
                 max_seqlen_k=max(lens_k))
    check_with_the_same_mask("triton", q, k, v, args, alibi_slopes=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def test_dropout_deterministic_dq_matches_atomic_and_reference():
    q, k, v = qkv(1, 4, 2, 70, 70, 32, F32, seed=3)
    args = dropout_args(32, 0.3, seed=77, causal=True, deterministic=True)
    _, dq, dk, dv = check_with_the_same_mask("triton", q, k, v, args)
    out, lse = kernels.attention_fwd(q, k, v, args)
    dout = _randn(*out.shape, dtype=F32, seed=99)
    again = kernels.attention_bwd(dout, q, k, v, out, lse, args)
    for name, a, b in zip(("dq", "dk", "dv"), (dq, dk, dv), again):
        assert torch.equal(a, b), f"{name}: the deterministic backward must be bitwise reproducible"


def _applied_mask(p, seed, offset=0, batch=2, heads=4, seqlen_q=128):
    """The keep mask the forward kernel applied, read back exactly: with ``v = I`` (seqlen_k =
    head_dim = 64) the output row is ``P_i * Z_i`` and every ``P_ij > 0`` (no masking)."""
    q = _randn(batch, heads, seqlen_q, 64, dtype=F32, seed=seed % 1000)
    k = _randn(batch, heads, 64, 64, dtype=F32, seed=seed % 1000 + 1)
    v = torch.eye(64, device=DEVICE).expand(batch, heads, 64, 64)
    args = dropout_args(64, p, seed=seed, offset=offset)
    out, _ = kernels.attention_fwd(q, k, v, args)
    probs = reference.attention_probabilities(q.double(), k.double(), args)
    assert (probs > 1e-30).all()
    return out != 0, out, probs, dropout_keep_mask(q, k, args)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8], ids=["p0.1", "p0.5", "p0.8"])
def test_dropout_mask_is_the_specified_one_and_keeps_one_minus_p(p):
    kept, out, probs, spec = _applied_mask(p, seed=int(p * 1000) + 11)
    assert torch.equal(kept, spec), "the kernel's mask must be fastattn.philox's, bit for bit"
    # Kept entries carry P / (1 - p).
    torch.testing.assert_close(out[kept].double(), probs[kept] / (1 - p), rtol=1e-5, atol=1e-7)
    n = kept.numel()
    rate = kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f} vs {1 - p} (n={n}, 5 sigma = {5 * sigma:.4f})"
    # Rows and heads are not copies of one another (a broken counter would repeat them).
    rows = kept.reshape(-1, kept.shape[-1])
    assert torch.unique(rows, dim=0).shape[0] > 0.95 * rows.shape[0]


def test_dropout_is_reproducible_for_a_seed_and_offset():
    a, out_a, _, _ = _applied_mask(0.4, seed=5)
    b, out_b, _, _ = _applied_mask(0.4, seed=5)
    assert torch.equal(out_a, out_b), "same seed and offset: bitwise the same forward"
    c, _, _, _ = _applied_mask(0.4, seed=6)
    d, _, _, _ = _applied_mask(0.4, seed=5, offset=64)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    # offset + Lk is the counter of the next row: the mask moves up by one row.
    assert torch.equal(d.reshape(-1, 64)[:-1], a.reshape(-1, 64)[1:])


# --------------------------------------------------------------------------- public API


def _flash_run(backend, seed, q, k, v, **kw):
    torch.manual_seed(seed)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse, s_dmask = fastattn.flash_attn_func(*leaves, return_attn_probs=True, backend=backend, **kw)
    out.backward(_randn(*out.shape, dtype=out.dtype, seed=4))
    return out.detach(), lse, s_dmask, *(t.grad for t in leaves)


def test_flash_api_dropout_seeded_by_torch_and_equal_across_backends():
    """``torch.manual_seed`` fixes the draw; the triton and reference backends draw the same
    mask (both follow fastattn.philox), so their outputs and gradients agree."""
    q = _randn(2, 50, 4, 32, dtype=F32, seed=1)
    k, v = _randn(2, 70, 2, 32, dtype=F32, seed=2), _randn(2, 70, 2, 32, dtype=F32, seed=3)
    opts = dict(dropout_p=0.25, causal=True, window_size=(30, -1), softcap=4.0)
    tri = _flash_run("triton", 123, q, k, v, **opts)
    again = _flash_run("triton", 123, q, k, v, **opts)
    other = _flash_run("triton", 124, q, k, v, **opts)
    ref = _flash_run("reference", 123, q, k, v, **opts)
    assert torch.equal(tri[0], again[0]) and not torch.equal(tri[0], other[0])
    for name, a, b in zip(("out", "lse", "S_dmask", "dq", "dk", "dv"), tri, ref):
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-5, atol=1e-5, msg=name)


def test_flash_api_s_dmask_encodes_the_keep_mask():
    q = _randn(1, 40, 2, 16, dtype=F16, seed=6)
    k, v = _randn(1, 40, 2, 16, dtype=F16, seed=7), _randn(1, 40, 2, 16, dtype=F16, seed=8)
    torch.manual_seed(9)
    out, lse, s_dmask = fastattn.flash_attn_func(q, k, v, dropout_p=0.3, causal=True, return_attn_probs=True,
                                                 backend="triton")
    torch.manual_seed(9)
    seed, offset = draw_dropout_seed(0.3)  # the draw the API made
    args = AttentionArgs(scale=0.25, causal=True, bottom_right=True, dropout_p=0.3, seed=seed, offset=offset)
    keep = dropout_keep_mask(q.transpose(1, 2), k.transpose(1, 2), args)
    probs = reference.attention_probabilities(q.transpose(1, 2).double(), k.transpose(1, 2).double(), args)
    assert s_dmask.shape == (1, 2, 40, 40) and s_dmask.dtype == F16
    visible = probs > 0
    assert torch.equal((s_dmask >= 0)[visible], keep[visible])
    torch.testing.assert_close(s_dmask.abs().double(), probs, rtol=2e-3, atol=1e-4)
    ref = reference.flash_attn_func(q.double(), k.double(), v.double(), 0.3, causal=True,
                                    dropout_mask=keep)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=4e-3)
    assert fastattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="triton")[2] is None


def test_sdpa_dropout_runs_in_triton_and_matches_reference_backend():
    q, k, v = qkv(2, 2, 2, 33, 47, 16, F32, seed=12)
    outs = []
    for backend in ("triton", "reference"):
        torch.manual_seed(31)
        outs.append(fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.4, is_causal=True, backend=backend))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    torch.manual_seed(31)
    plain = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton")
    assert not torch.equal(outs[0], plain)
