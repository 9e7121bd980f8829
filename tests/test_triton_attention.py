"""Triton FlashAttention-2 forward and backward against the float64 reference.

Runs on CUDA tensors when a GPU is present, else on CPU tensors under the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported).

Tolerances (fastattn.testing's rule): fp32 to 1e-5 relative to the output's magnitude;
fp16/bf16 by flash-attn's rule, ``max|out - ref64| <= 2 * max|ref_lowp - ref64|`` plus half an
ulp and the 1e-5 relative floor, where ``ref_lowp`` is the reference computed in the input
dtype, for the output, the LSE and dq/dk/dv (one shared ``dout``). Every output buffer the kernels allocate is poisoned with NaN (torch's
``fill_uninitialized_memory``), so an element a kernel forgets to write fails the test.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.attention_args import AttentionArgs
from attention_cases import assert_close as _assert_close
from attention_cases import reference_fwd_bwd as _reference

kernels = pytest.importorskip("fastattn.kernels.attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory(poisoned):
    """Every test of this module (and of the modules importing this fixture) runs with
    NaN-filled allocations: conftest's ``poisoned``."""
    yield


def _randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype).to(DEVICE)


def _qkv(b, hq, hk, lq, lk, d, dtype, seed=0):
    return (_randn(b, hq, lq, d, dtype=dtype, seed=seed), _randn(b, hk, lk, d, dtype=dtype, seed=seed + 1),
            _randn(b, hk, lk, d, dtype=dtype, seed=seed + 2))


def _check_fwd_bwd(q, k, v, args, *, deterministic=False, **kw):
    dtype = q.dtype
    out, lse = kernels.attention_fwd(q, k, v, args, **kw)
    dout = _randn(*out.shape, dtype=dtype, seed=99)
    dq, dk, dv = kernels.attention_bwd(dout, q, k, v, out, lse, args, **kw)
    ref64 = _reference(q, k, v, args, dout, upcast=True, **kw)
    lowp = _reference(q, k, v, args, dout, upcast=False, **kw)
    # fp32 gradients are judged relative to the largest of the three: one of them can be ~0 by
    # cancellation (dq with a single visible key is P * (dP - delta) = 0 exactly in real
    # arithmetic), and rounding in a cancelling sum is relative to its terms, not to its result.
    grad_scale = max(g[torch.isfinite(g)].abs().max().item() if torch.isfinite(g).any() else 0.0
                     for g in ref64[2:])
    for name, got, r64, rlp, kind in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref64, lowp,
                                         ("out", "lse", "grad", "grad", "grad")):
        _assert_close(name, got, r64, rlp, kind, dtype, fp32_scale=grad_scale if kind == "grad" else None)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    return out, lse, dq, dk, dv


def _args(d, causal=False, bottom_right=False, **kw):
    return AttentionArgs(scale=1.0 / math.sqrt(d), causal=causal, bottom_right=bottom_right, **kw)


# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim, dtype, causal, bottom_right)
CASES = [
    (1, 2, 2, 17, 17, 8, F32, False, False),
    (3, 1, 1, 128, 128, 64, F32, True, False),
    (1, 4, 1, 113, 257, 40, F32, True, True),      # MQA, Lq < Lk, bottom-right
    (1, 2, 1, 257, 128, 72, F32, True, True),      # Lq > Lk bottom-right: leading rows see no key
    (1, 4, 2, 257, 70, 72, F32, True, False),      # Lq > Lk top-left, GQA 4:2
    (2, 2, 2, 1, 257, 111, F32, False, False),
    (1, 2, 2, 128, 1, 59, F32, True, True),
    (1, 8, 1, 128, 64, 64, F16, True, False),      # GQA 8:1
    (3, 4, 2, 17, 113, 96, F16, False, False),     # GQA 4:2
    (1, 2, 1, 113, 17, 160, F16, True, True),
    (1, 2, 2, 128, 128, 256, F16, True, False),
    (1, 2, 2, 1, 1, 59, F16, False, False),
    (1, 1, 1, 257, 257, 128, F16, False, False),
    (1, 8, 1, 49, 113, 111, BF16, True, True),
    (3, 2, 1, 128, 17, 59, BF16, True, False),
    (1, 2, 2, 17, 257, 192, BF16, False, False),
    (1, 2, 1, 257, 257, 40, BF16, True, True),
    (1, 6, 3, 64, 64, 8, BF16, True, False),
    (1, 2, 2, 33, 47, 1, F32, True, True),         # head dim 1
]


def _case_id(c):
    b, hq, hk, lq, lk, d, dtype, causal, br = c
    mode = ("causal-br" if br else "causal-tl") if causal else "full"
    return f"b{b}-h{hq}:{hk}-q{lq}-k{lk}-d{d}-{str(dtype)[6:]}-{mode}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_forward_backward_matches_reference(case):
    b, hq, hk, lq, lk, d, dtype, causal, br = case
    q, k, v = _qkv(b, hq, hk, lq, lk, d, dtype, seed=lq * 7 + d)
    _check_fwd_bwd(q, k, v, _args(d, causal, br))


def test_rows_that_see_no_key_give_zero_and_inf_lse():
    q, k, v = _qkv(1, 2, 2, 40, 8, 32, F32)
    out, lse = kernels.attention_fwd(q, k, v, _args(32, causal=True, bottom_right=True))
    # bottom-right: row i sees keys j <= i - 32, so rows 0..31 see none.
    assert torch.isinf(lse[:, :, :32]).all() and (lse[:, :, :32] > 0).all()
    assert torch.equal(out[:, :, :32], torch.zeros_like(out[:, :, :32]))
    assert torch.isfinite(lse[:, :, 32:]).all()


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_flash_layout_and_sliced_inputs_by_strides(dtype):
    """(B, L, H, D) storage viewed as (B, H, L, D), a head-dim slice of a wider buffer, and a
    non-unit last-dim stride: all read in place, results as for contiguous inputs."""
    b, h, l, d = 2, 2, 67, 40
    q = _randn(b, l, h, d, dtype=dtype, seed=1).transpose(1, 2)
    kbig = _randn(b, h, l, 2 * d, dtype=dtype, seed=2)
    k = kbig[..., d:]                                   # row stride 2*d, offset d
    v = _randn(b, h, d, l, dtype=dtype, seed=3).transpose(2, 3)  # last-dim stride l
    assert not q.is_contiguous() and not k.is_contiguous() and v.stride(-1) != 1
    out, *_ = _check_fwd_bwd(q, k, v, _args(d, causal=True))
    # the output follows q's dim order: flash layout in, flash layout out.
    assert out.transpose(1, 2).is_contiguous()


def test_deterministic_dq_is_bitwise_reproducible():
    q, k, v = _qkv(1, 4, 2, 97, 83, 48, BF16, seed=5)
    args = _args(48, causal=True, bottom_right=True, deterministic=True)
    out, lse, dq, dk, dv = _check_fwd_bwd(q, k, v, args)
    dout = _randn(*out.shape, dtype=BF16, seed=99)
    again = kernels.attention_bwd(dout, q, k, v, out, lse, args)
    for a, b_ in zip((dq, dk, dv), again):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("window", [(8, 0), (5, 3), (-1, 4), (16, -1)], ids=["w8-0", "w5-3", "wNone-4", "w16-None"])
def test_sliding_window(window):
    q, k, v = _qkv(1, 2, 1, 70, 90, 32, F16, seed=11)
    _check_fwd_bwd(q, k, v, _args(32, bottom_right=True, window_left=window[0], window_right=window[1]))


def test_softcap_and_alibi():
    q, k, v = _qkv(2, 4, 2, 50, 61, 64, F32, seed=3)
    slopes = (torch.rand(2, 4, generator=torch.Generator().manual_seed(0)) * 0.3).to(DEVICE)
    _check_fwd_bwd(q, k, v, _args(64, causal=True, bottom_right=True, softcap=5.0), alibi_slopes=slopes)
    _check_fwd_bwd(q.to(F16), k.to(F16), v.to(F16), _args(64, softcap=2.0), alibi_slopes=slopes[0])


@pytest.mark.parametrize("kind", ["bool", "float"], ids=["bool", "float"])
def test_attn_mask_broadcast_by_strides(kind):
    b, h, lq, lk, d = 2, 2, 45, 38, 24
    q, k, v = _qkv(b, h, h, lq, lk, d, BF16, seed=21)
    g = torch.Generator().manual_seed(4)
    if kind == "bool":
        mask = (torch.rand(b, 1, lq, lk, generator=g) > 0.3).to(DEVICE)
        mask[0, 0, 3] = False  # a fully masked row: output 0, lse +inf
    else:
        mask = torch.randn(1, h, lq, lk, generator=g).to(BF16).to(DEVICE)
        mask[0, 0, 5, ::2] = float("-inf")
    _check_fwd_bwd(q, k, v, _args(d), attn_mask=mask.expand(b, h, lq, lk))
    if kind == "float":  # a row whose every score is -inf: forward only (the oracle's gradient there is NaN)
        mask[0, 1, 7] = float("-inf")
        out, lse = kernels.attention_fwd(q, k, v, _args(d), attn_mask=mask.expand(b, h, lq, lk))
        ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), _args(d),
                                               attn_mask=mask.double().expand(b, h, lq, lk))
        _assert_close("out", out, ref_out, reference.attention(q, k, v, _args(d), attn_mask=mask)[0], "out", BF16)
        assert torch.isinf(lse[:, 1, 7]).all() and torch.equal(out[:, 1, 7], torch.zeros_like(out[:, 1, 7]))
        assert torch.isfinite(lse[:, 0]).all()


def test_varlen_matches_per_sequence_and_reference():
    lens_q, lens_k = [5, 40, 1, 77], [9, 40, 33, 60]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device=DEVICE)
    d = 40
    q, k, v = _qkv(1, 2, 1, sum(lens_q), sum(lens_k), d, F16, seed=8)
    args = _args(d, causal=True, bottom_right=True, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    out, lse, *_ = _check_fwd_bwd(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    for s in range(len(lens_q)):
        qs, ks = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        o1, l1 = kernels.attention_fwd(q[:, :, qs], k[:, :, ks], v[:, :, ks], args)
        torch.testing.assert_close(out[:, :, qs], o1, rtol=0, atol=2e-3)
        torch.testing.assert_close(lse[:, :, qs], l1, rtol=0, atol=1e-5)


def test_supports_names_what_is_not_implemented():
    q, k, v = _qkv(1, 2, 2, 8, 8, 16, F16)
    assert kernels.supports(q, k, v, args=_args(16)) is None
    assert kernels.supports(q, k, v, args=_args(16, dropout_p=0.1)) is None  # tests/test_triton_dropout.py
    assert "head dim" in kernels.supports(*_qkv(1, 2, 2, 8, 8, 320, F16), args=_args(16))
    assert kernels.supports(q.double(), k.double(), v.double(), args=_args(16)) is not None
    assert kernels.supports(*_qkv(1, 2, 2, 8, 8, 129, F32), args=_args(16)) is None  # test_triton_attention_wide_fp32
    assert kernels.supports(*_qkv(1, 2, 2, 8, 8, 128, F32), args=_args(16)) is None
    assert "int8" in kernels.supports(*(t.to(torch.int8) for t in (q, k, v)), args=_args(16))
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        fastattn.scaled_dot_product_attention(q.double(), k.double(), v.double(), backend="triton")


# --------------------------------------------------------------------------- public API, custom op, compile


def test_public_sdpa_and_flash_api_with_grad():
    b, hq, hk, l, d = 2, 4, 2, 37, 72
    q, k, v = (t.requires_grad_() for t in _qkv(b, hq, hk, l, l, d, F32, seed=31))
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, backend="triton")
    out.square().sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference.scaled_dot_product_attention(q64, k64, v64, is_causal=True, enable_gqa=True)
    ref.square().sum().backward()
    for got, want in ((out, ref), (q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        _assert_close("sdpa", got, want, None, "out")

    qf, kf, vf = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    outf, lse, _ = fastattn.flash_attn_func(qf, kf, vf, causal=True, return_attn_probs=True, backend="triton")
    ref_out, ref_lse, _ = reference.flash_attn_func(qf.double(), kf.double(), vf.double(), causal=True,
                                                    return_attn_probs=True)
    _assert_close("flash out", outf, ref_out, None, "out")
    _assert_close("flash lse", lse, ref_lse, None, "lse")


def test_backend_triton_on_cpu_without_interpreter_says_how_to_enable_it():
    code = (
        "import torch, fastattn\n"
        "q = torch.randn(1, 2, 8, 16)\n"
        "try:\n"
        "    fastattn.scaled_dot_product_attention(q, q, q, backend='triton')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {k_: v_ for k_, v_ in os.environ.items() if k_ != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "TRITON_INTERPRET=1" in res.stdout, res.stdout + res.stderr


def _op_inputs(dtype, requires_grad):
    q, k, v = _qkv(1, 2, 1, 9, 11, 16, dtype, seed=41)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    # scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, seed, offset,
    # max_seqlen_q, max_seqlen_k, deterministic, num_splits, backend
    options = (0.25, True, True, -1, -1, 0.0, 0.0, 0, 0, 9, 11, False, 0, "triton")
    return q, k, v, options


def test_opcheck_custom_ops():
    pytest.importorskip("fastattn.ops.attention")
    q, k, v, options = _op_inputs(F32, requires_grad=True)
    torch.library.opcheck(torch.ops.fastattn.attention_fwd.default, (q, k, v, None, None, None, None, *options))
    with torch.no_grad():
        out, lse = torch.ops.fastattn.attention_fwd(q, k, v, None, None, None, None, *options)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastattn.attention_bwd.default,
                          (dout, q.detach(), k.detach(), v.detach(), out, lse, None, None, None, None, *options))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self, dim=32, heads=2):
            super().__init__()
            self.heads = heads
            self.qkv = torch.nn.Linear(dim, 3 * dim)
            self.proj = torch.nn.Linear(dim, dim)

        def forward(self, x):
            b, l, dim = x.shape
            q, k, v = self.qkv(x).view(b, l, 3, self.heads, dim // self.heads).unbind(2)
            o = fastattn.flash_attn_func(q, k, v, causal=True, backend="triton")
            return self.proj(o.reshape(b, l, dim))

    block = Block().to(DEVICE)
    x = torch.randn(2, 21, 32, device=DEVICE)
    eager = block(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    compiled = torch.compile(block, fullgraph=True)
    got = compiled(x)
    got.sum().backward()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    for p, g in zip(block.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- interpreter bf16 dot


def test_interpreter_bf16_dot_fix():
    """Triton's interpreter multiplies bf16 bit patterns as integers in tl.dot; the fix decodes them."""
    if not INTERPRETED:
        pytest.skip("the interpreter is not in use")
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    from fastattn.kernels._interpreter import ensure_interpreter_fixes

    @triton.jit
    def _dot(A, B, C, N: tl.constexpr):
        r = tl.arange(0, N)
        a = tl.load(A + r[:, None] * N + r[None, :])
        b = tl.load(B + r[:, None] * N + r[None, :])
        tl.store(C + r[:, None] * N + r[None, :], tl.dot(a, b))

    a = torch.randn(16, 16).to(BF16)
    b = torch.randn(16, 16).to(BF16)
    want = a.float() @ b.float()
    ensure_interpreter_fixes()
    ensure_interpreter_fixes()  # idempotent
    fixed = InterpreterBuilder.create_dot
    assert getattr(fixed, "_fastattn_bf16_fix", False)
    try:
        InterpreterBuilder.create_dot = fixed._fastattn_original
        c = torch.empty(16, 16)
        _dot[(1,)](a, b, c, N=16)
        assert (c - want).abs().max() > 1e3  # the bug: raw 16-bit patterns multiplied
    finally:
        InterpreterBuilder.create_dot = fixed
    c = torch.full((16, 16), float("nan"))
    _dot[(1,)](a, b, c, N=16)
    torch.testing.assert_close(c, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["add", "min", "max", "and", "or", "xor"])
def test_interpreter_descriptor_reduction(kind):
    """The interpreter lacks reductions into a tensor descriptor (``desc.atomic_<kind>``, TMA's
    ``cp.reduce.async.bulk.tensor``); the fix applies each kind per element and drops the tile's
    elements outside the tensor, as the hardware does."""
    if not INTERPRETED:
        pytest.skip("the interpreter is not in use")
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from fastattn.kernels._interpreter import ensure_interpreter_fixes

    @triton.jit
    def _reduce(desc, V, KIND: tl.constexpr, N: tl.constexpr):
        r = tl.arange(0, N)
        v = tl.load(V + r[:, None] * N + r[None, :])
        if KIND == "add":
            desc.atomic_add([8, 0], v)
        elif KIND == "min":
            desc.atomic_min([8, 0], v)
        elif KIND == "max":
            desc.atomic_max([8, 0], v)
        elif KIND == "and":
            desc.atomic_and([8, 0], v)
        elif KIND == "or":
            desc.atomic_or([8, 0], v)
        else:
            desc.atomic_xor([8, 0], v)

    ensure_interpreter_fixes()
    dtype = torch.float32 if kind == "add" else torch.int32  # Triton allows min/max on integers only
    make = (lambda *s: torch.randn(*s)) if dtype == torch.float32 else (lambda *s: torch.randint(-2**30, 2**30, s, dtype=torch.int32))
    dst, val = make(20, 16), make(16, 16)
    want = dst.clone()
    inside = want[8:20]  # the tile covers rows 8..23: rows 20..23 are outside and dropped
    op = {"add": torch.add, "min": torch.minimum, "max": torch.maximum, "and": torch.bitwise_and,
          "or": torch.bitwise_or, "xor": torch.bitwise_xor}[kind]
    inside.copy_(op(inside, val[:12]))
    _reduce[(1,)](TensorDescriptor.from_tensor(dst, [16, 16]), val, KIND=kind, N=16)
    torch.testing.assert_close(dst, want, rtol=1e-6, atol=1e-6)


def test_interpreter_bf16_cast_rounds_to_nearest_even():
    """The interpreter truncates fp32 -> bf16 casts; the fix rounds to nearest even as the GPU does."""
    if not INTERPRETED:
        pytest.skip("the interpreter is not in use")
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    from fastattn.kernels._interpreter import ensure_interpreter_fixes

    @triton.jit
    def _cast(X, Y, N: tl.constexpr):
        r = tl.arange(0, N)
        tl.store(Y + r, tl.load(X + r).to(tl.bfloat16))

    x = torch.randn(64) * 100
    x[0], x[1] = float("nan"), float("inf")
    ensure_interpreter_fixes()
    fixed = InterpreterBuilder.cast_impl
    assert getattr(fixed, "_fastattn_bf16_fix", False)
    y = torch.full((64,), float("nan"), dtype=BF16)
    _cast[(1,)](x, y, N=64)
    want = x.to(BF16)  # torch rounds to nearest even
    assert torch.isnan(y[0]) and torch.isinf(y[1])
    assert torch.equal(y[2:].view(torch.int16), want[2:].view(torch.int16))


# --------------------------------------------------------------------------- slow cross-product

SLOW_DIMS = [1, 8, 40, 59, 64, 72, 96, 111, 128, 160, 192, 256]
SLOW_SEQ = [(1, 1), (17, 17), (113, 257), (257, 113), (1023, 1024)]
SLOW_HEADS = [(3, 3), (8, 1), (4, 2)]
SLOW_MODES = ["full", "causal-tl", "causal-br"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("seq", SLOW_SEQ, ids=[f"q{a}-k{b}" for a, b in SLOW_SEQ])
@pytest.mark.parametrize("d", SLOW_DIMS, ids=[f"d{d}" for d in SLOW_DIMS])
def test_cross_product_slow(d, seq, dtype):
    """Head dims x seqlens x dtypes; the head layout and the causal mode cycle over the grid so
    every pair of them meets many times without multiplying the (interpreter) run time by nine."""
    i = SLOW_DIMS.index(d) + SLOW_SEQ.index(seq)
    heads, mode = SLOW_HEADS[i % 3], SLOW_MODES[(i // 3 + [F16, BF16, F32].index(dtype)) % 3]
    long = seq[0] > 1000
    q, k, v = _qkv(1 if long else 3, 2 if long else heads[0], 1 if long else heads[1], seq[0], seq[1], d, dtype,
                   seed=d + seq[0])
    _check_fwd_bwd(q, k, v, _args(d, causal=mode != "full", bottom_right=mode == "causal-br"))
