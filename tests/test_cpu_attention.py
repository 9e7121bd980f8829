"""Native CPU attention (csrc/cpu/attention*.cpp, backend "cpu") against the float64 reference.

Every check runs the forward and the backward pass. Tolerances (fastattn.testing's rule): fp32
to 1e-5 relative to the output's magnitude; fp16/bf16 by flash-attn's rule, ``max|out - ref64|
<= 2 * max|ref_lowp - ref64|`` plus half an ulp and the 1e-5 relative floor, where ``ref_lowp``
is the reference computed in the input dtype, for the output, the LSE and dq/dk/dv (one shared
``dout``). Outputs are poisoned
with NaN (torch's ``fill_uninitialized_memory`` fills every ``torch.empty``), so an element
the kernel forgets to write fails.

The kernels are compiled for AVX2, AVX-512 and AVX-512+BF16 and the best one the CPU has
is picked at run time; ``isa`` parametrisations force each lower one this CPU also has,
so all code paths are checked on one machine.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastattn import reference
from fastattn.attention_args import AttentionArgs
from attention_cases import assert_close as _assert_close
from attention_cases import reference_fwd_bwd as _reference

cpu = pytest.importorskip("fastattn.backends.cpu.attention", reason="fastattn._C (native CPU kernels) not built")
_C = cpu._C

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
_ORDER = ["avx2", "avx512", "avx512bf16"]
BEST_ISA = _C.cpu_attention_isa()
ISAS = _ORDER[: _ORDER.index(BEST_ISA) + 1] if BEST_ISA in _ORDER else []
if not ISAS:
    pytest.skip("this CPU has neither AVX2+FMA nor AVX-512", allow_module_level=True)


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory(poisoned):
    """Every test of this module (and of the modules importing this fixture) runs with
    NaN-filled allocations: conftest's ``poisoned``."""
    yield


@pytest.fixture
def use_isa(request):
    """Force the kernels' instruction set for one test; restores the one chosen at import
    afterwards (the CPU's best, or what FASTATTN_CPU_ISA named)."""
    def _use(name):
        assert _C.cpu_attention_use_isa(name), name
    yield _use
    _C.cpu_attention_use_isa(cpu.isa())


def _randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)


def _qkv(b, hq, hk, lq, lk, d, dtype, seed=0, dv=None):
    return (_randn(b, hq, lq, d, dtype=dtype, seed=seed), _randn(b, hk, lk, d, dtype=dtype, seed=seed + 1),
            _randn(b, hk, lk, dv or d, dtype=dtype, seed=seed + 2))


def _args(d, causal=False, bottom_right=False, **kw):
    return AttentionArgs(scale=kw.pop("scale", 1.0 / math.sqrt(d)), causal=causal, bottom_right=bottom_right, **kw)


def _core_kwargs(kw):
    return dict(attn_mask=kw.get("attn_mask"), alibi_slopes=kw.get("alibi_slopes"),
                cu_seqlens_q=kw.get("cu_seqlens_q"), cu_seqlens_k=kw.get("cu_seqlens_k"))


def _run(q, k, v, args, **kw):
    assert cpu.supports(q, k, v, args=args, **_core_kwargs(kw)) is None
    out, lse = cpu.attention_fwd(q, k, v, args=args, **_core_kwargs(kw))
    dout = _randn(*out.shape, dtype=q.dtype, seed=99)
    dq, dk, dv = cpu.attention_bwd(dout, q, k, v, out, lse, args=args, **_core_kwargs(kw))
    return out, lse, dq, dk, dv, dout


def _check(q, k, v, args, **kw):
    dtype = q.dtype
    out, lse, dq, dk, dv, dout = _run(q, k, v, args, **kw)
    ref64 = _reference(q, k, v, args, dout, upcast=True, **kw)
    lowp = _reference(q, k, v, args, dout, upcast=False, **kw)
    for name, got, r64, rlp, kind in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref64, lowp,
                                         ("out", "lse", "grad", "grad", "grad")):
        _assert_close(name, got, r64, rlp, kind, dtype)
    assert out.dtype == dtype and lse.dtype == F32 and lse.shape == q.shape[:3]
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    assert dq.dtype == dk.dtype == dv.dtype == dtype
    return out, lse, dq, dk, dv


# ------------------------------------------------------------------------------ shape grid

HEAD_DIMS = [1, 40, 59, 64, 111, 128, 256]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("d", HEAD_DIMS, ids=[f"d{d}" for d in HEAD_DIMS])
def test_head_dims(d, dtype):
    """Every head dim class (1, odd, not a multiple of the vector width, 256), GQA 4:2,
    batch 3, Lq != Lk, causal top-left."""
    q, k, v = _qkv(3, 2, 1, 113, 257, d, dtype, seed=d)
    _check(q, k, v, _args(d, causal=True))


# (seqlen_q, seqlen_k)
SEQS = [(1, 1), (1, 17), (17, 113), (113, 17), (257, 257)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seq", SEQS, ids=[f"q{a}-k{b}" for a, b in SEQS])
def test_seqlens(seq, dtype, causal):
    lq, lk = seq
    q, k, v = _qkv(1, 2, 1, lq, lk, 64, dtype, seed=lq + lk)
    _check(q, k, v, _args(64, causal=causal))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_long_sequence_split_key_blocks(dtype):
    """One head with 1024 keys: the backward splits key blocks over threads (dQ under a lock)."""
    q, k, v = _qkv(1, 1, 1, 1024, 1024, 64, dtype, seed=3)
    _check(q, k, v, _args(64, causal=True))


@pytest.mark.parametrize("isa", _ORDER, ids=_ORDER)
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=["fp32", "bf16", "fp16"])
def test_every_instruction_set(isa, dtype, use_isa):
    if isa not in ISAS:
        pytest.skip(f"this CPU lacks {isa}")
    use_isa(isa)
    q, k, v = _qkv(2, 4, 2, 131, 200, 72, dtype, seed=5)
    _check(q, k, v, _args(72, causal=True, bottom_right=True))
    q, k, v = _qkv(1, 2, 2, 70, 45, 33, dtype, seed=6)
    _check(q, k, v, _args(33, softcap=5.0, window_left=9, window_right=4),
           alibi_slopes=torch.rand(1, 2) * 0.5)


def test_fp16_and_value_head_dim_unlike_query():
    q, k, v = _qkv(2, 3, 3, 65, 80, 48, F16, seed=7, dv=24)
    _check(q, k, v, _args(48, causal=True))
    q, k, v = _qkv(1, 2, 1, 40, 33, 20, F32, seed=8, dv=100)
    _check(q, k, v, _args(20))


def test_causal_alignment_and_rows_that_see_no_key():
    """Bottom-right causal with Lq > Lk: the first Lq - Lk rows see nothing (out 0, LSE +inf);
    top-left causal with Lq < Lk: every row sees keys 0..i."""
    q, k, v = _qkv(1, 2, 2, 150, 70, 32, F32, seed=9)
    out, lse, *_ = _check(q, k, v, _args(32, causal=True, bottom_right=True))
    assert (out[:, :, :80] == 0).all() and torch.isinf(lse[:, :, :80]).all() and (lse[:, :, :80] > 0).all()
    assert torch.isfinite(lse[:, :, 80:]).all()
    q, k, v = _qkv(1, 2, 2, 70, 150, 32, BF16, seed=10)
    _check(q, k, v, _args(32, causal=True, bottom_right=False))


def test_gqa_mqa_and_custom_scale():
    q, k, v = _qkv(2, 8, 1, 97, 97, 64, F32, seed=11)  # MQA
    _check(q, k, v, _args(64, scale=0.37))
    q, k, v = _qkv(1, 6, 3, 64, 190, 64, BF16, seed=12)  # GQA 2:1
    _check(q, k, v, _args(64, causal=True, scale=-0.2))  # a negative scale is legal in SDPA


@pytest.mark.parametrize("window", [(8, 0), (5, 3), (-1, 4), (70, -1)], ids=["w8-0", "w5-3", "wNone-4", "w70-None"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_sliding_window(window, dtype):
    q, k, v = _qkv(1, 2, 1, 200, 230, 40, dtype, seed=13)
    _check(q, k, v, _args(40, causal=window[1] == 0, bottom_right=True, window_left=window[0],
                          window_right=window[1]))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
def test_softcap_and_alibi(dtype):
    q, k, v = _qkv(2, 4, 2, 90, 130, 64, dtype, seed=14)
    _check(q, k, v, _args(64, causal=True, bottom_right=True, softcap=3.0),
           alibi_slopes=torch.rand(2, 4) * 0.3)
    _check(q, k, v, _args(64), alibi_slopes=torch.rand(4) * 0.3)  # (Hq,) slopes


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["bool", "float"], ids=["bool", "float"])
def test_attn_mask_broadcast_by_strides(kind, dtype):
    """SDPA masks arrive expanded to (B, Hq, Lq, Lk) with stride 0 on broadcast dims; some
    rows fully masked give out 0 / LSE +inf."""
    b, h, lq, lk = 2, 4, 77, 140
    q, k, v = _qkv(b, h, 2, lq, lk, 48, dtype, seed=15)
    g = torch.Generator().manual_seed(16)
    if kind == "bool":
        base = torch.rand(b, 1, lq, lk, generator=g) > 0.4
        base[:, :, 5] = False  # a fully masked row
        mask = base.expand(b, h, lq, lk)
    else:
        base = torch.randn(1, h, 1, lk, generator=g).to(dtype)
        mask = base.expand(b, h, lq, lk)
    assert 0 in mask.stride()
    _check(q, k, v, _args(48), attn_mask=mask)


def test_varlen_matches_reference_and_per_sequence():
    lens_q, lens_k = [5, 130, 1, 64], [7, 100, 33, 64]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    for dtype in (F32, BF16):
        q, k, v = _qkv(1, 4, 2, int(cu_q[-1]), int(cu_k[-1]), 64, dtype, seed=17)
        args = _args(64, causal=True, bottom_right=True)
        kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, alibi_slopes=torch.rand(4, 4) * 0.2)
        out, lse, *_ = _check(q, k, v, args, **kw)
        # Property: each packed sequence equals a separate call on that sequence alone.
        for s in range(len(lens_q)):
            qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
            o1, l1 = cpu.attention_fwd(q[:, :, qs], k[:, :, ks], v[:, :, ks], attn_mask=None,
                                       alibi_slopes=kw["alibi_slopes"][s : s + 1], cu_seqlens_q=None,
                                       cu_seqlens_k=None, args=args)
            torch.testing.assert_close(out[:, :, qs], o1, rtol=0, atol=0)
            torch.testing.assert_close(lse[:, :, qs], l1, rtol=0, atol=0)


def test_strided_inputs_flash_layout_and_slices():
    """(B, L, H, D) tensors viewed as (B, H, L, D), a sliced head dim, and an expanded key:
    taken by strides, output laid out in q's dim order."""
    for dtype in (F32, BF16):
        qf = _randn(1, 90, 4, 64, dtype=dtype, seed=18)
        kvf = _randn(1, 120, 2, 2, 80, dtype=dtype, seed=19)
        q, k, v = qf.transpose(1, 2), kvf[:, :, :, 0, :64].transpose(1, 2), kvf[:, :, :, 1, 16:].transpose(1, 2)
        out, *_ = _check(q, k, v, _args(64, causal=True))
        assert out.transpose(1, 2).is_contiguous()
        k1 = _randn(1, 1, 1, 120, 64, dtype=dtype, seed=20).expand(1, 2, 1, 120, 64)[:, :, 0]
        _check(q.contiguous(), k1, k1, _args(64))


def test_deterministic_and_thread_count_independence():
    q, k, v = _qkv(1, 2, 1, 300, 300, 64, F32, seed=21)
    args = _args(64, causal=True)
    det = AttentionArgs(**{**args.__dict__, "deterministic": True})
    a = _run(q, k, v, det)
    b = _run(q, k, v, det)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(q, k, v, args)
    finally:
        torch.set_num_threads(prev)
    # The forward is computed row block by row block whatever the thread count: bitwise equal.
    assert torch.equal(one[0], a[0]) and torch.equal(one[1], a[1])
    for x, y in zip(one[2:5], a[2:5]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_nan_propagates_from_visible_keys_and_never_from_other_sequences():
    """NaN in a key a row sees makes that row NaN (as torch's math path does); NaN in another
    packed sequence, or past a causal row's block range, never reaches it."""
    q, k, v = _qkv(1, 1, 1, 200, 200, 16, F32, seed=22)
    v[0, 0, 150, 0] = float("nan")
    out, _ = cpu.attention_fwd(q, k, v, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None,
                               cu_seqlens_k=None, args=_args(16, causal=True))
    assert not torch.isnan(out[0, 0, :128]).any()  # those rows never reach key block 2
    assert torch.isnan(out[0, 0, 150:, 0]).all() and not torch.isnan(out[0, 0, 150:, 1:]).any()
    cu = torch.tensor([0, 100, 200], dtype=torch.int32)
    out, _ = cpu.attention_fwd(q, k, v, attn_mask=None, alibi_slopes=None, cu_seqlens_q=cu,
                               cu_seqlens_k=cu, args=_args(16))
    assert not torch.isnan(out[0, 0, :100]).any() and torch.isnan(out[0, 0, 100:, 0]).all()


def test_supports_names_what_is_not_covered():
    q, k, v = _qkv(1, 2, 2, 8, 8, 16, F32)
    assert cpu.supports(q, k, v, args=_args(16)) is None
    assert cpu.supports(q, k, v, args=_args(16, dropout_p=0.1)) is None  # tests/test_cpu_dropout.py
    assert "dtype" in cpu.supports(q.double(), k.double(), v.double(), args=_args(16))
    big = _randn(1, 1, 4, 257, dtype=F32, seed=0)
    assert "256" in cpu.supports(big, big, big, args=_args(257))
    mask = torch.zeros(1, 2, 8, 8, dtype=torch.int32)
    assert "attn_mask" in cpu.supports(q, k, v, args=_args(16), attn_mask=mask)


def test_auto_picks_cpu_for_cpu_tensors_and_public_api_matches_reference():
    fastattn = pytest.importorskip("fastattn")
    from fastattn import dispatch

    q, k, v = _qkv(2, 4, 2, 33, 47, 32, F32, seed=23)
    args = _args(32, causal=True)
    chosen = dispatch.select(("attention_fwd", "attention_bwd"), "auto", q.device, q, k, v, attn_mask=None,
                             alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, args=args)
    assert chosen == "cpu"
    if not hasattr(fastattn, "scaled_dot_product_attention"):
        pytest.skip("public API not in this tree")
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = fastattn.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=True, backend="cpu")
    ref = reference.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1),
                                                 v.double().repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert qg.grad is not None and kg.grad.shape == k.shape


# ------------------------------------------------------------------------------ random shapes

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    b=st.integers(1, 3), hk=st.integers(1, 3), group=st.integers(1, 3), lq=st.integers(1, 200),
    lk=st.integers(1, 200), d=st.integers(1, 160), dtype=st.sampled_from([F32, BF16, F16]),
    mode=st.sampled_from(["full", "causal-tl", "causal-br", "window"]),
)
def test_random_shapes(b, hk, group, lq, lk, d, dtype, mode):
    q, k, v = _qkv(b, hk * group, hk, lq, lk, d, dtype, seed=lq * 7 + lk)
    kw = dict(causal=mode.startswith("causal"), bottom_right=mode != "causal-tl")
    if mode == "window":
        kw.update(window_left=lq // 3, window_right=lk // 5)
    _check(q, k, v, _args(d, **kw))


# ------------------------------------------------------------------------------ slow grid

SLOW_SEQS = [(1, 1), (17, 17), (113, 257), (257, 113), (1024, 1024), (1023, 1024)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mode", ["full", "causal-tl", "causal-br"], ids=["full", "causal-tl", "causal-br"])
@pytest.mark.parametrize("batch", [1, 3], ids=["b1", "b3"])
@pytest.mark.parametrize("seq", SLOW_SEQS, ids=[f"q{a}-k{b}" for a, b in SLOW_SEQS])
@pytest.mark.parametrize("d", HEAD_DIMS, ids=[f"d{d}" for d in HEAD_DIMS])
def test_cross_product_slow(d, seq, batch, mode, dtype):
    q, k, v = _qkv(batch, 4, 2, seq[0], seq[1], d, dtype, seed=d + seq[0])
    _check(q, k, v, _args(d, causal=mode != "full", bottom_right=mode == "causal-br"))
