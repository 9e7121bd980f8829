"""The float64 oracle itself: fastattn.reference against torch's math SDPA path and
against hand-worked / explicit-loop computations of flash-attn's semantics.

Expected values here are computed independently of the reference's helpers: torch's
own math kernel for SDPA, and per-row Python loops (written straight from the
definitions of the public API) for flash-attn's bottom-right causal, windows,
softcap, ALiBi and LSE.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastattn import reference

INF = float("inf")


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _torch_math(q, k, v, **kw):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kw)


# ----------------------------------------------------------------------------- SDPA vs torch math


def _sdpa_case(name, gen, dtype):
    """(q, k, v, kwargs) for one SDPA semantics case; B=2, H=3, D=8 unless the case says."""
    B, H, L, S, D = 2, 3, 5, 7, 8
    kw = {}
    if name == "causal_lq_lt_lk":
        L, S = 3, 7
        kw["is_causal"] = True
    elif name == "causal_lq_gt_lk":
        L, S = 7, 3  # top-left: row i sees keys j <= i, every row sees key 0
        kw["is_causal"] = True
    elif name == "causal_square":
        L = S = 6
        kw["is_causal"] = True
    q, k, v = _randn(gen, B, H, L, D, dtype=dtype), _randn(gen, B, H, S, D, dtype=dtype), _randn(gen, B, H, S, D, dtype=dtype)
    if name == "bool_mask_b11s":  # key padding
        m = torch.rand(B, 1, 1, S, generator=gen) > 0.3
        m[..., 0] = True
        kw["attn_mask"] = m
    elif name == "float_mask_11ls":
        kw["attn_mask"] = _randn(gen, 1, 1, L, S, dtype=dtype)
    elif name == "bool_mask_ls":
        m = torch.rand(L, S, generator=gen) > 0.4
        m[:, 1] = True
        kw["attn_mask"] = m
    elif name == "float_mask_full":
        kw["attn_mask"] = _randn(gen, B, H, L, S, dtype=dtype)
    elif name == "gqa":
        k, v = k[:, :1].clone(), v[:, :1].clone()
        q = _randn(gen, B, 3, L, D, dtype=dtype)
        kw["enable_gqa"] = True
    elif name == "scale":
        kw["scale"] = 0.37
    elif name == "fully_masked_rows_bool":
        m = torch.rand(B, H, L, S, generator=gen) > 0.3
        m[0, 1, 2] = False
        m[1, :, 4] = False
        kw["attn_mask"] = m
    elif name == "fully_masked_rows_float":
        m = _randn(gen, L, S, dtype=dtype)
        m[3] = -INF
        kw["attn_mask"] = m
    elif name == "value_head_dim":
        v = _randn(gen, B, H, S, 5, dtype=dtype)
    return q, k, v, kw


SDPA_CASES = [
    "plain", "bool_mask_b11s", "float_mask_11ls", "bool_mask_ls", "float_mask_full", "causal_lq_lt_lk",
    "causal_lq_gt_lk", "causal_square", "gqa", "scale", "fully_masked_rows_bool", "fully_masked_rows_float",
    "value_head_dim",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", SDPA_CASES, ids=SDPA_CASES)
def test_sdpa_matches_torch_math(case, dtype):
    q, k, v, kw = _sdpa_case(case, _gen(SDPA_CASES.index(case)), dtype)
    expected = _torch_math(q, k, v, **kw)
    got = reference.scaled_dot_product_attention(q, k, v, **kw)
    assert got.dtype == dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, **_tol(dtype))
    if case.startswith("fully_masked"):
        assert torch.isfinite(got).all()


def test_sdpa_fully_masked_row_is_zero():
    gen = _gen(100)
    q, k, v = _randn(gen, 1, 1, 3, 4), _randn(gen, 1, 1, 5, 4), _randn(gen, 1, 1, 5, 4)
    m = torch.ones(3, 5, dtype=torch.bool)
    m[1] = False
    out = reference.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert torch.equal(out[0, 0, 1], torch.zeros(4, dtype=torch.float64))
    assert (out[0, 0, 0].abs() > 0).all()


def test_sdpa_upcast_matches_torch_float64():
    gen = _gen(101)
    q, k, v = (_randn(gen, 2, 2, 6, 8, dtype=torch.float32) for _ in range(3))
    got = reference.scaled_dot_product_attention(q, k, v, is_causal=True, upcast=True)
    assert got.dtype == torch.float64
    expected = _torch_math(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_sdpa_3d_and_extra_leading_dims():
    gen = _gen(102)
    q, k, v = _randn(gen, 4, 5, 8), _randn(gen, 4, 6, 8), _randn(gen, 4, 6, 8)
    torch.testing.assert_close(reference.scaled_dot_product_attention(q, k, v), _torch_math(q, k, v), **_tol(torch.float64))
    q, k, v = _randn(gen, 2, 3, 2, 5, 8), _randn(gen, 2, 3, 2, 6, 8), _randn(gen, 2, 3, 2, 6, 8)
    torch.testing.assert_close(reference.scaled_dot_product_attention(q, k, v), _torch_math(q, k, v), **_tol(torch.float64))


# ----------------------------------------------------------------------------- flash semantics, by loops


def _loop_flash(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None):
    """flash-attn semantics straight from the definitions, one (b, h, i) row at a time, float64.

    q (B, Lq, H, D); k, v (B, Lk, Hk, D). Returns out (B, Lq, H, Dv) and lse (B, H, Lq)."""
    q, k, v = q.double(), k.double(), v.double()
    B, Lq, H, D = q.shape
    Lk, Hk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, Lq, H, v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(B, H, Lq, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hk)
            for i in range(Lq):
                diag = i + Lk - Lq  # bottom-right alignment
                keys, scores = [], []
                for j in range(Lk):
                    if causal and j > diag:
                        continue
                    if window[0] >= 0 and j < diag - window[0]:
                        continue
                    if window[1] >= 0 and j > diag + window[1]:
                        continue
                    s = float(q[b, i, h] @ k[b, j, hk]) * scale
                    if softcap > 0:
                        s = softcap * math.tanh(s / softcap)
                    if alibi is not None:
                        slope = float(alibi[h] if alibi.dim() == 1 else alibi[b, h])
                        s -= slope * abs(diag - j)
                    keys.append(j)
                    scores.append(s)
                if not keys:
                    lse[b, h, i] = INF
                    continue
                m = max(scores)
                total = sum(math.exp(s - m) for s in scores)
                lse[b, h, i] = m + math.log(total)
                for j, s in zip(keys, scores):
                    out[b, i, h] += math.exp(s - m) / total * v[b, j, hk]
    return out, lse


def _qkv(seed, B, Lq, Lk, H, Hk, D, dtype=torch.float64):
    gen = _gen(seed)
    return _randn(gen, B, Lq, H, D, dtype=dtype), _randn(gen, B, Lk, Hk, D, dtype=dtype), _randn(gen, B, Lk, Hk, D, dtype=dtype)


def test_flash_causal_bottom_right_lq_gt_lk_hand_worked():
    # Lq=3, Lk=2: row i sees keys j <= i - 1. Row 0 sees none, row 1 only key 0, row 2 both.
    q, k, v = _qkv(1, 1, 3, 2, 1, 1, 4)
    out, lse, _ = reference.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, upcast=True)
    assert torch.equal(out[0, 0, 0], torch.zeros(4, dtype=torch.float64))
    assert lse[0, 0, 0] == INF
    torch.testing.assert_close(out[0, 1, 0], v[0, 0, 0], rtol=1e-14, atol=1e-14)
    scale = 0.5  # 1 / sqrt(4)
    s10 = float(q[0, 1, 0] @ k[0, 0, 0]) * scale
    assert lse[0, 0, 1].item() == pytest.approx(s10, rel=1e-13)
    s2 = torch.stack([q[0, 2, 0] @ k[0, j, 0] for j in range(2)]) * scale
    p = torch.softmax(s2, dim=0)
    torch.testing.assert_close(out[0, 2, 0], p[0] * v[0, 0, 0] + p[1] * v[0, 1, 0], rtol=1e-13, atol=1e-13)
    assert lse[0, 0, 2].item() == pytest.approx(torch.logsumexp(s2, 0).item(), rel=1e-13)


def test_flash_causal_bottom_right_lq_lt_lk_hand_worked():
    # Lq=2, Lk=4: row 0 sees keys 0..2, row 1 sees keys 0..3 (all).
    q, k, v = _qkv(2, 1, 2, 4, 1, 1, 4)
    out, lse, _ = reference.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, upcast=True)
    for i, n in ((0, 3), (1, 4)):
        s = torch.stack([q[0, i, 0] @ k[0, j, 0] for j in range(n)]) * 0.5
        p = torch.softmax(s, dim=0)
        torch.testing.assert_close(out[0, i, 0], (p[:, None] * v[0, :n, 0]).sum(0), rtol=1e-13, atol=1e-13)
        assert lse[0, 0, i].item() == pytest.approx(torch.logsumexp(s, 0).item(), rel=1e-13)


def test_flash_window_hand_worked():
    q, k, v = _qkv(3, 1, 4, 4, 1, 1, 4)
    # (1, 0): row i sees keys i-1..i, so row 0 is exactly v[0].
    out = reference.flash_attn_func(q, k, v, window_size=(1, 0))
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], rtol=1e-14, atol=1e-14)
    # (0, 1): row i sees keys i..i+1, so the last row is exactly v[3].
    out = reference.flash_attn_func(q, k, v, window_size=(0, 1))
    torch.testing.assert_close(out[0, 3, 0], v[0, 3, 0], rtol=1e-14, atol=1e-14)
    # (0, 0): each row sees only its own key.
    out = reference.flash_attn_func(q, k, v, window_size=(0, 0))
    torch.testing.assert_close(out, v, rtol=1e-14, atol=1e-14)


FLASH_CASES = {
    "causal_lq_gt_lk": dict(Lq=7, Lk=4, kw=dict(causal=True)),
    "causal_lq_lt_lk": dict(Lq=3, Lk=8, kw=dict(causal=True)),
    "window_left_right": dict(Lq=6, Lk=9, kw=dict(window=(2, 1))),
    "window_left_only": dict(Lq=9, Lk=6, kw=dict(window=(1, -1))),
    "window_causal": dict(Lq=5, Lk=5, kw=dict(causal=True, window=(2, -1))),
    "softcap": dict(Lq=5, Lk=6, kw=dict(softcap=0.7, scale=1.3)),
    "alibi_h": dict(Lq=5, Lk=7, kw=dict(alibi="h", causal=True)),
    "alibi_bh": dict(Lq=6, Lk=4, kw=dict(alibi="bh")),
    "gqa_scale": dict(Lq=4, Lk=5, kw=dict(scale=0.21), Hk=1),
    "everything": dict(Lq=6, Lk=8, kw=dict(causal=True, window=(3, -1), softcap=1.5, alibi="bh", scale=0.4)),
}


@pytest.mark.parametrize("case", list(FLASH_CASES), ids=list(FLASH_CASES))
def test_flash_attn_func_matches_loops(case):
    spec = FLASH_CASES[case]
    B, H, D = 2, 4, 6
    q, k, v = _qkv(10 + list(FLASH_CASES).index(case), B, spec["Lq"], spec["Lk"], H, spec.get("Hk", 2), D)
    kw = dict(spec["kw"])
    gen = _gen(5)
    if kw.get("alibi") == "h":
        kw["alibi"] = torch.rand(H, generator=gen, dtype=torch.float64) + 0.1
    elif kw.get("alibi") == "bh":
        kw["alibi"] = torch.rand(B, H, generator=gen, dtype=torch.float64) + 0.1
    exp_out, exp_lse = _loop_flash(q, k, v, **kw)
    out, lse, _ = reference.flash_attn_func(
        q, k, v, softmax_scale=kw.get("scale"), causal=kw.get("causal", False),
        window_size=kw.get("window", (-1, -1)), softcap=kw.get("softcap", 0.0), alibi_slopes=kw.get("alibi"),
        return_attn_probs=True, upcast=True,
    )
    assert out.shape == (B, spec["Lq"], H, D) and lse.shape == (B, H, spec["Lq"])
    torch.testing.assert_close(out, exp_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, exp_lse, rtol=1e-12, atol=1e-12)
    if case == "causal_lq_gt_lk":  # rows 0..2 see no key
        assert (lse[:, :, :3] == INF).all() and (out[:, :3] == 0).all()
        assert torch.isfinite(lse[:, :, 3:]).all()


def test_flash_lse_is_logsumexp_of_scaled_scores():
    q, k, v = _qkv(20, 2, 5, 6, 2, 2, 8, dtype=torch.float32)
    _, lse, s_dmask = reference.flash_attn_func(q, k, v, softmax_scale=0.3, return_attn_probs=True)
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * 0.3
    assert lse.dtype == torch.float32 and s_dmask is None
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, dim=-1), rtol=1e-6, atol=1e-6)


def test_varlen_equals_per_sequence_calls():
    H, Hk, D = 4, 2, 8
    lens_q, lens_k = [3, 1, 6, 4], [5, 2, 2, 4]  # third sequence: Lq > Lk, rows that see no key
    gen = _gen(30)
    q = _randn(gen, sum(lens_q), H, D)
    k, v = _randn(gen, sum(lens_k), Hk, D), _randn(gen, sum(lens_k), Hk, D)
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    slopes = torch.rand(len(lens_q), H, generator=gen, dtype=torch.float64)
    kw = dict(causal=True, window_size=(3, -1), softcap=2.0, softmax_scale=0.3)
    out, lse, _ = reference.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), alibi_slopes=slopes,
                                                   return_attn_probs=True, upcast=True, **kw)
    assert out.shape == q.shape and lse.shape == (H, sum(lens_q))
    for s in range(len(lens_q)):
        qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
        o, l, _ = reference.flash_attn_func(q[None, qs], k[None, ks], v[None, ks], alibi_slopes=slopes[s],
                                            return_attn_probs=True, upcast=True, **kw)
        torch.testing.assert_close(out[qs], o[0], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(lse[:, qs], l[0], rtol=1e-13, atol=1e-13)
        eo, el = _loop_flash(q[None, qs], k[None, ks], v[None, ks], causal=True, window=(3, -1), softcap=2.0,
                             scale=0.3, alibi=slopes[s])
        torch.testing.assert_close(out[qs], eo[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse[:, qs], el[0], rtol=1e-12, atol=1e-12)


def test_kvcache_appends_in_place_and_attends_to_prefix():
    B, Lc, Hk, H, D, new = 2, 10, 2, 4, 8, 2
    gen = _gen(40)
    k_cache, v_cache = _randn(gen, B, Lc, Hk, D), _randn(gen, B, Lc, Hk, D)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q = _randn(gen, B, 3, H, D)
    k_new, v_new = _randn(gen, B, new, Hk, D), _randn(gen, B, new, Hk, D)
    lens = torch.tensor([3, 7], dtype=torch.int32)
    out, lse = reference.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens,
                                                 causal=True, return_softmax_lse=True, upcast=True)
    for b, n in enumerate(lens.tolist()):
        # written in place at n .. n + new, everything else untouched
        assert torch.equal(k_cache[b, n : n + new], k_new[b]) and torch.equal(v_cache[b, n : n + new], v_new[b])
        assert torch.equal(k_cache[b, :n], k_before[b, :n]) and torch.equal(k_cache[b, n + new :], k_before[b, n + new :])
        assert torch.equal(v_cache[b, :n], v_before[b, :n]) and torch.equal(v_cache[b, n + new :], v_before[b, n + new :])
        # attends to the first n + new keys, causal aligned bottom-right
        eo, el = _loop_flash(q[b : b + 1], k_cache[b : b + 1, : n + new], v_cache[b : b + 1, : n + new], causal=True)
        torch.testing.assert_close(out[b : b + 1], eo, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse[b : b + 1].double(), el, rtol=1e-12, atol=1e-12)


def test_kvcache_without_new_keys_int_seqlens():
    gen = _gen(41)
    k_cache, v_cache = _randn(gen, 2, 6, 1, 4), _randn(gen, 2, 6, 1, 4)
    q = _randn(gen, 2, 1, 2, 4)
    out = reference.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=4, softcap=0.9)
    eo, _ = _loop_flash(q, k_cache[:, :4], v_cache[:, :4], softcap=0.9)
    torch.testing.assert_close(out, eo, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- scaled_masked_softmax


def _explicit_softmax(x, masked_out, scale):
    """softmax(scale * x) with ``masked_out`` (bool, True = excluded) positions, rows with none left -> 0."""
    x = x.double() * scale
    x = x.masked_fill(masked_out, -INF)
    p = torch.exp(x - x.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    return torch.nan_to_num(p, nan=0.0)


def test_softmax_bool_mask_true_is_masked_out():
    gen = _gen(50)
    x = _randn(gen, 2, 3, 5, 7, dtype=torch.float32)
    mask = torch.rand(2, 1, 5, 7, generator=gen) > 0.6
    got = reference.scaled_masked_softmax(x, mask, scale=0.8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _explicit_softmax(x, mask.expand_as(x), 0.8), rtol=1e-6, atol=1e-7)
    assert (got[mask.expand_as(x)] == 0).all()


def test_softmax_additive_float_mask():
    gen = _gen(51)
    x = _randn(gen, 2, 4, 6, dtype=torch.float32)
    add = _randn(gen, 4, 6, dtype=torch.float32)
    got = reference.scaled_masked_softmax(x, add, scale=1.7)
    expected = torch.softmax(x.double() * 1.7 + add.double(), dim=-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)


def test_softmax_causal_top_left():
    gen = _gen(52)
    x = _randn(gen, 3, 4, 6, dtype=torch.float32)
    got = reference.scaled_masked_softmax(x, None, scale=0.5, causal=True)
    upper = torch.tensor([[j > i for j in range(6)] for i in range(4)])
    torch.testing.assert_close(got.double(), _explicit_softmax(x, upper.expand_as(x), 0.5), rtol=1e-6, atol=1e-7)
    assert got[0, 0, 0] == 1.0


def test_softmax_fully_masked_row_is_zero():
    gen = _gen(53)
    x = _randn(gen, 2, 3, 5, dtype=torch.float32)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[1, 2] = True
    got = reference.scaled_masked_softmax(x, mask)
    assert torch.equal(got[1, 2], torch.zeros(5))
    torch.testing.assert_close(got.sum(-1)[mask.any(-1).logical_not()], torch.ones(5), rtol=1e-6, atol=1e-6)
    add = torch.zeros(3, 5)
    add[0] = -INF
    got = reference.scaled_masked_softmax(x, add)
    assert torch.equal(got[:, 0], torch.zeros(2, 5))


def test_softmax_fp16_computes_in_fp32():
    gen = _gen(54)
    # scale * scores overflows fp16 (max 65504): only an fp32 computation gives finite probabilities.
    x = (_randn(gen, 4, 8) * 5000 + 30000).to(torch.float16)
    mask = torch.rand(4, 8, generator=gen) > 0.7
    got = reference.scaled_masked_softmax(x, mask, scale=4.0)
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all()
    expected = _explicit_softmax(x, mask, 4.0)
    # only the final rounding to fp16 separates the two
    assert ((got.double() - expected).abs() <= expected.abs() * 2.0**-11 + 2.0**-24).all()


def test_softmax_upcast_returns_float64():
    x = _randn(_gen(55), 3, 5, dtype=torch.float32)
    got = reference.scaled_masked_softmax(x, None, scale=2.0, upcast=True)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.softmax(x.double() * 2.0, -1), rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------- feed-forward


def _gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


FFN_TOL = dict(rtol=1e-5, atol=1e-6)


def test_swiglu_formula():
    gen = _gen(60)
    g, u = _randn(gen, 3, 5, 16, dtype=torch.float32), _randn(gen, 3, 5, 16, dtype=torch.float32)
    expected = g.double() / (1.0 + torch.exp(-g.double())) * u.double()
    torch.testing.assert_close(reference.swiglu(g, u).double(), expected, **FFN_TOL)


@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
def test_geglu_formula(approximate):
    gen = _gen(61)
    g, u = _randn(gen, 4, 24, dtype=torch.float32), _randn(gen, 4, 24, dtype=torch.float32)
    act = _gelu_erf if approximate == "none" else _gelu_tanh
    torch.testing.assert_close(reference.geglu(g, u, approximate).double(), act(g.double()) * u.double(), **FFN_TOL)


@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
def test_bias_gelu_formula(approximate):
    gen = _gen(62)
    x, b = _randn(gen, 2, 3, 20, dtype=torch.float32), _randn(gen, 20, dtype=torch.float32)
    act = _gelu_erf if approximate == "none" else _gelu_tanh
    torch.testing.assert_close(reference.bias_gelu(x, b, approximate).double(), act(x.double() + b.double()), **FFN_TOL)


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"], ids=["swiglu", "geglu", "geglu_tanh"])
def test_feed_forward_weight_forms_and_formula(activation):
    gen = _gen(63)
    dim, hidden, dim_out = 12, 20, 9
    x = _randn(gen, 2, 5, dim, dtype=torch.float32)
    w_gate, w_up = _randn(gen, hidden, dim, dtype=torch.float32), _randn(gen, hidden, dim, dtype=torch.float32)
    w_down = _randn(gen, dim_out, hidden, dtype=torch.float32)
    fused = reference.feed_forward(x, torch.cat([w_gate, w_up]), w_down, activation)
    pair = reference.feed_forward(x, (w_gate, w_up), w_down, activation)
    torch.testing.assert_close(fused, pair, rtol=0, atol=0)
    a = x.double() @ w_gate.double().t()
    act = {"swiglu": lambda t: t * torch.sigmoid(t), "geglu": _gelu_erf, "geglu_tanh": _gelu_tanh}[activation]
    expected = (act(a) * (x.double() @ w_up.double().t())) @ w_down.double().t()
    assert fused.shape == (2, 5, dim_out)
    torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-5)


def test_upcast_returns_float64():
    gen = _gen(64)
    f32 = lambda *s: _randn(gen, *s, dtype=torch.float32)
    g, u, b = f32(3, 8), f32(3, 8), f32(8)
    assert reference.swiglu(g, u, upcast=True).dtype == torch.float64
    assert reference.geglu(g, u, "tanh", upcast=True).dtype == torch.float64
    assert reference.bias_gelu(g, b, upcast=True).dtype == torch.float64
    out = reference.feed_forward(g, f32(10, 8), f32(4, 5), upcast=True)
    assert out.dtype == torch.float64
    q, k, v = f32(1, 4, 2, 8), f32(1, 5, 2, 8), f32(1, 5, 2, 8)
    out, lse, _ = reference.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, upcast=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    eo, el = _loop_flash(q, k, v, causal=True)
    torch.testing.assert_close(out, eo, rtol=1e-12, atol=1e-12)
    # fp32 and float64 computations differ (the upcast really happened), by fp32 rounding only
    out32 = reference.flash_attn_func(q, k, v, causal=True)
    assert out32.dtype == torch.float32 and not torch.equal(out32.double(), out)
    torch.testing.assert_close(out32.double(), out, rtol=1e-5, atol=1e-6)


def test_kvcache_with_an_empty_cache_row_sees_no_key():
    gen = torch.Generator().manual_seed(41)
    q = torch.randn(2, 1, 4, 8, generator=gen)
    k_cache, v_cache = torch.randn(2, 5, 2, 8, generator=gen), torch.randn(2, 5, 2, 8, generator=gen)
    lens = torch.tensor([0, 3], dtype=torch.int32)
    out, lse = reference.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, return_softmax_lse=True)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isinf(lse[0]).all() and (lse[0] > 0).all()
    expected = reference.flash_attn_func(q[1:], k_cache[1:, :3], v_cache[1:, :3])
    torch.testing.assert_close(out[1:], expected, rtol=1e-6, atol=1e-6)
