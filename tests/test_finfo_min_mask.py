"""Additive masks holding ``torch.finfo(dtype).min`` (what Hugging Face's eager models and many
user codes put where a key is hidden) behave as in torch on every backend.

``finfo.min`` is a finite number, not ``-inf``: torch adds it to the scores, so a row where every
key carries it is a row of equal logits and its softmax is the uniform average of the values, not
zeros. Only ``-inf`` hides a key. Kernels that work in the log2 domain must not turn
``log2(e) * finfo(float32).min`` (an overflow) into ``-inf``, and the backward pass must still
give the gradient of the uniform average for such rows.

Oracle: the float64 math of torch's SDPA on the same inputs, ``softmax(q k^T * scale + mask) v``,
with the mask's own values (a whole-row ``finfo.min`` swamps the scores in float64 as it does in
fp32, so the oracle's rows are uniform too), and torch's own SDPA for the forward pass.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import dispatch

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
TOL = {F32: 1e-5, BF16: 2e-2, F16: 4e-3}  # relative to the output's (gradient's) largest magnitude


def _avail(name):
    return dispatch.available_backends("cpu")[name]


def _needs(name):
    why = _avail(name)
    if why is not None:
        pytest.skip(f"backend {name!r} unavailable here: {why}")


def _inputs(b, h, lq, lk, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen).to(dtype).requires_grad_() for n in (lq, lk, lk)]


def _mask(b, lq, lk, dtype, seed):
    """(B, 1, Lq, Lk) additive mask in ``dtype``: zeros and random scores' worth of noise, with
    * batch 0: query rows 0-2 wholly finfo.min (left-padded queries: uniform average), key 1
      finfo.min for every row (a padded key);
    * batch 1: query row 0 finfo.min on every key but the last, which is -inf (uniform over the
      finfo.min keys only: -inf is the one value that hides), row 1 +finfo.max on key 2 (a finite
      number: that key takes every weight), and a block of -inf keys on the later rows."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.finfo(dtype).min, torch.finfo(dtype).max
    m = (torch.randn(b, 1, lq, lk, generator=gen) * 0.5).to(dtype)
    m[0, :, :3, :] = lo
    m[0, :, :, 1] = lo
    m[1, :, 0, :] = lo
    m[1, :, 0, -1] = float("-inf")
    m[1, :, 1, 2] = hi
    m[1, :, 3:, lk // 2: lk // 2 + 3] = float("-inf")
    return m


def _oracle(q, k, v, mask, dout):
    """float64 math SDPA (softmax over the given mask's values) and its gradients."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    scores = q64 @ k64.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask.double()
    out = torch.softmax(scores, dim=-1) @ v64
    grads = torch.autograd.grad(out, (q64, k64, v64), dout.double())
    return out, grads


def _close(got, want, dtype, what, tol=None):
    err = (got.double() - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= (tol or TOL[dtype]) * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def _check_sdpa(backend, dtype, shape=(2, 2, 70, 150, 32), backward=True, seed=0):
    b, h, lq, lk, d = shape
    q, k, v = _inputs(b, h, lq, lk, d, dtype, seed)
    mask = _mask(b, lq, lk, dtype, seed + 1)
    dout = torch.randn(b, h, lq, d, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    want, want_grads = _oracle(q, k, v, mask, dout)
    if dtype != F16:  # fp16's finfo.min (-65504) does not swamp the scores: those rows are a softmax
        # The padded query rows really are uniform averages (what the fix is about).
        uniform = v.detach().double()[0].mean(dim=1, keepdim=True)
        assert torch.allclose(want[0, :, :3], uniform.expand(-1, 3, -1), atol=1e-12)
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    _close(out, want, dtype, "out")
    # torch's own SDPA agrees with the oracle on these rows.
    with torch.no_grad():
        torch_out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                      attn_mask=mask.float())
    # (fp16's finfo.min rows keep fp32's rounding of -65504 + score in torch too: the fp16 tolerance)
    _close(torch_out, want, F16 if dtype == F16 else F32, "torch's sdpa")
    if backward:
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for name, g, w in zip("qkv", grads, want_grads):
            _close(g, w, dtype, f"d{name}")


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_reference_backend(dtype):
    _check_sdpa("reference", dtype, shape=(2, 2, 9, 12, 16))


# ----------------------------------------------------------------------------- cpu (native kernels)

_ISA_ORDER = ["avx2", "avx512", "avx512bf16"]


def _isas():
    if _avail("cpu") is not None:
        return []
    from fastattn.backends.cpu import attention as cpu_attention

    best = cpu_attention._C.cpu_attention_isa()
    return _ISA_ORDER[: _ISA_ORDER.index(best) + 1] if best in _ISA_ORDER else []


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=["fp32", "bf16", "fp16"])
def test_cpu_backend(dtype):
    """Rows wholly finfo.min, mixed with -inf and +finfo.max, across several key blocks (Lk = 150 >
    the kernel's 128-key block) and query blocks (Lq = 70 > 64), forward and backward."""
    _needs("cpu")
    _check_sdpa("cpu", dtype)


@pytest.mark.parametrize("isa", _ISA_ORDER)
def test_cpu_every_instruction_set(isa, use_isa):
    _needs("cpu")
    if isa not in _isas():
        pytest.skip(f"this CPU lacks {isa}")
    use_isa(isa)
    for dtype in (F32, BF16):
        _check_sdpa("cpu", dtype, shape=(2, 3, 5, 20, 24), seed=3)


def test_auto_backend_with_gqa():
    """The default backend (the native kernel for CPU tensors) with grouped key/value heads."""
    _needs("cpu")
    q, k, v = _inputs(2, 4, 6, 10, 16, F32, seed=5)
    k, v = (t.detach()[:, :2].clone().requires_grad_() for t in (k, v))
    mask = _mask(2, 6, 10, F32, seed=6)
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    want, _ = _oracle(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), mask, torch.zeros(2, 4, 6, 16))
    _close(out, want, F32, "out")


@pytest.mark.parametrize("offset", [-800.0, -3e4, 3e4], ids=["-800", "-3e4", "+3e4"])
def test_cpu_large_unsaturated_mask_rows(offset):
    """Rows whose mask adds one large finite constant (still far from finfo.min, so the scores are
    not swamped and the row is the softmax of the scores): the LSE is then too large for the
    backward to recompute P from it alone, and the kernel recomputes the row's max and sum. The
    logits carry fp32's rounding of ``offset + score`` (``|offset| * 2^-24``), so the tolerance
    follows it."""
    _needs("cpu")
    q, k, v = _inputs(2, 2, 70, 150, 32, F32, seed=13)
    mask = torch.randn(2, 1, 70, 150, generator=torch.Generator().manual_seed(14)) * 0.5
    mask[:, :, ::3] += offset  # every third row, across query and key blocks
    dout = torch.randn(2, 2, 70, 32, generator=torch.Generator().manual_seed(15))
    want, want_grads = _oracle(q, k, v, mask, dout)
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="cpu")
    tol = max(TOL[F32], 16 * abs(offset) * 2.0 ** -24)
    _close(out, want, F32, "out", tol)
    for name, g, w in zip("qkv", torch.autograd.grad(out, (q, k, v), dout), want_grads):
        _close(g, w, F32, f"d{name}", tol)


@pytest.mark.parametrize("offset", [-2.0 ** 30, 2.0 ** 30, -1e20], ids=["-2^30", "+2^30", "-1e20"])
def test_cpu_rows_whose_lse_cannot_hold_the_row_sum(offset):
    """Rows whose mask adds one constant so large that ``offset + score`` rounds to ``offset`` in
    fp32 (torch's arithmetic: the row is exactly uniform) while ``offset * log2(e)`` does not
    overflow: ``LSE = offset + log(n)`` then rounds to ``offset`` and the backward cannot take P
    from it (it would be 1 instead of 1/n); the kernel recomputes the row's max and sum. The oracle
    rounds the logits to fp32 as torch and the kernels form them."""
    _needs("cpu")
    q, k, v = _inputs(2, 2, 70, 150, 32, F32, seed=16)
    mask = torch.randn(2, 1, 70, 150, generator=torch.Generator().manual_seed(17)) * 0.5
    mask[:, :, 1::4] = offset
    dout = torch.randn(2, 2, 70, 32, generator=torch.Generator().manual_seed(18))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    logits = (q64 @ k64.transpose(-1, -2) * 32 ** -0.5 + mask.double()).float().double()  # fp32 logits
    want = torch.softmax(logits, dim=-1) @ v64
    want_grads = torch.autograd.grad(want, (q64, k64, v64), dout.double())
    torch.testing.assert_close(want[:, :, 1::4], v64.mean(2, keepdim=True).expand(-1, -1, 18, -1).detach())
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="cpu")
    _close(out, want, F32, "out")
    for name, g, w in zip("qkv", torch.autograd.grad(out, (q, k, v), dout), want_grads):
        _close(g, w, F32, f"d{name}")


def test_all_neg_inf_row_still_sees_nothing():
    """-inf stays "hidden": a row of -inf gives what it gave before (zeros, torch's convention for a
    row that sees no key), unlike a row of finfo.min."""
    _needs("cpu")
    q, k, v = _inputs(1, 1, 3, 5, 8, F32, seed=7)
    mask = torch.zeros(1, 1, 3, 5)
    mask[..., 1, :] = float("-inf")
    mask[..., 2, :] = torch.finfo(F32).min
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="cpu")
    assert torch.equal(out[0, 0, 1], torch.zeros(8))
    torch.testing.assert_close(out[0, 0, 2], v[0, 0].mean(0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- triton (interpreter)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_triton_attention_forward(dtype):
    _needs("triton")
    _check_sdpa("triton", dtype, shape=(2, 1, 9, 20, 16), backward=False)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_triton_attention_backward(dtype):
    """The backward reads P from exact base-2 row statistics (max and log2 of the sum kept apart)
    under an additive mask: rows wholly at finfo.min get the gradient of the uniform average."""
    _needs("triton")
    _check_sdpa("triton", dtype, shape=(2, 1, 9, 20, 16))


def test_triton_attention_backward_across_blocks():
    """The same with rows and keys spanning several blocks of every kernel (interior, diagonal
    and ragged blocks), GQA, causal and the deterministic dQ pass."""
    _needs("triton")
    import math

    from fastattn.kernels import attention as kernels
    from fastattn.attention_args import AttentionArgs

    b, hq, hk, lq, lk, d = 2, 2, 1, 70, 150, 16
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for h, n in ((hq, lq), (hk, lk), (hk, lk)))
    mask = _mask(b, lq, lk, F32, 6)
    dout = torch.randn(b, hq, lq, d, generator=gen)
    for causal, deterministic in ((False, False), (True, True)):
        args = AttentionArgs(scale=1 / math.sqrt(d), causal=causal, bottom_right=True, deterministic=deterministic)
        out, lse = kernels.attention_fwd(q, k, v, args, attn_mask=mask)
        dq, dk, dv = kernels.attention_bwd(dout, q, k, v, out, lse, args, attn_mask=mask)
        q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
        kr, vr = (t.repeat_interleave(hq // hk, dim=1) for t in (k64, v64))
        scores = q64 @ kr.transpose(-1, -2) * args.scale + mask.double()
        if causal:
            hidden = torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1)
            scores = scores.masked_fill(hidden, float("-inf"))
        want = torch.softmax(scores, dim=-1) @ vr
        grads = torch.autograd.grad(want, (q64, k64, v64), dout.double())
        _close(out, want.detach(), F32, f"out causal={causal}")
        for name, g, w in zip("qkv", (dq, dk, dv), grads):
            _close(g, w, F32, f"d{name} causal={causal}")


# ----------------------------------------------------------------------------- scaled_masked_softmax


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_scaled_masked_softmax(backend, dtype):
    """The fused softmax (every backend that implements it) with the same mask, forward and
    backward, against float64 ``softmax(scale * x + mask)``."""
    _needs(backend)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 2, 9, 20, generator=gen).to(dtype).requires_grad_()
    mask = _mask(2, 9, 20, dtype, seed=12)
    dy = torch.randn(2, 2, 9, 20, generator=gen).to(dtype)
    x64 = x.detach().double().requires_grad_()
    want = torch.softmax(0.5 * x64 + mask.double(), dim=-1)
    (want_dx,) = torch.autograd.grad(want, x64, dy.double())
    assert torch.allclose(want[0, :, 0], torch.full((2, 20), 1 / 20, dtype=torch.float64))  # uniform row
    try:
        y = fastattn.scaled_masked_softmax(x, mask, scale=0.5, backend=backend)
    except ValueError as e:  # a backend that cannot take this dtype says so; none may answer wrongly
        pytest.skip(str(e))
    _close(y, want, dtype, "softmax")
    (dx,) = torch.autograd.grad(y, x, dy)
    _close(dx, want_dx, dtype, "dx")
