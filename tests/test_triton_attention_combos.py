"""The Triton attention features in combination, against the float64 reference.

Each feature of kernels/attention.py and kernels/decode.py is tested alone in
tests/test_triton_attention.py and tests/test_triton_decode.py; here they meet:

1. GQA + sliding window + softcap, both alignments (bottom-right as flash-attn, top-left as
   SDPA), with windows narrow enough that whole key blocks are skipped on both sides;
2. varlen + causal + ALiBi (slopes ``(H,)`` and ``(B, H)``), unequal sequences (length 1,
   ``Lq != Lk``), GQA; varlen equals the per-sequence calls concatenated (output, LSE and
   gradients);
3. KV-cache decoding + GQA + window (+ softcap, ALiBi) through
   ``fastattn.flash_attn_with_kvcache(..., backend="triton")``; appending then attending equals
   attending over the already-concatenated cache; split-KV equals the unsplit kernel;
4. SDPA-layout ``attn_mask`` (bool and additive, broadcast ``(B,1,1,S)`` and ``(1,1,L,S)``)
   with GQA and softcap, and the gradient of a float mask (kernel level; the public SDPA's
   routing of a mask that requires grad is tested in tests/test_triton_mask_grad.py).

Tolerances and poisoning are those of the two single-feature files, whose helpers are
reused: fp32 to 1e-5 of the output's scale, fp16/bf16 by flash-attn's rule
``max|out - ref64| <= 2 * max|ref_lowp - ref64| + floor`` (output, LSE, dq/dk/dv with one
shared ``dout``); every tensor the kernels allocate starts as NaN. Without a GPU everything
runs on CPU tensors under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
Dropout is tested with its implementation, not here.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.kernels import decode as decode_kernels
from fastattn.attention_args import AttentionArgs

# Helpers (and the autouse poisoning fixtures, which pytest registers for this module because
# they are module attributes here) of the single-feature test files.
from test_triton_attention import (  # noqa: E402  (tests/ is on sys.path, as for triton_bf16_rounding)
    DEVICE,
    INTERPRETED,
    _args,
    _assert_close,
    _check_fwd_bwd,
    _poison_uninitialised_memory,  # noqa: F401  (autouse: NaN-filled torch.empty*)
    _qkv,
    _randn,
    kernels,
)
from decode_cases import bits, check, poisoned_cache, reference_kvcache  # noqa: E402
from decode_cases import run_case as run_kvcache_case  # noqa: E402

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
DTYPES = [F16, BF16, F32]
DTYPE_IDS = ["fp16", "bf16", "fp32"]


def test_new_tensors_are_poisoned():
    """The imported autouse fixture applies to this module: fresh tensors hold NaN (conftest's
    ``poisoned``: torch's fill_uninitialized_memory under deterministic mode)."""
    assert torch.isnan(torch.empty(4)).all()
    assert torch.isnan(torch.empty_like(torch.zeros(4))).all()


# --------------------------------------------------------------------------- 1. GQA + window + softcap


def _visited_key_range(row0, block_m, lq, lk, args):
    """The key range [lo, hi) the forward visits for the row block at ``row0`` (kernels/attention.py)."""
    off = lk - lq if args.bottom_right else 0
    wl = args.window_left if args.window_left >= 0 else 1 << 30
    wr = 0 if args.causal else (args.window_right if args.window_right >= 0 else 1 << 30)
    return max(0, row0 + off - wl), min(lk, row0 + block_m + off + wr)


def _assert_skips_blocks(lq, lk, args):
    """With the interpreter's forward tile, some row block skips whole key blocks on the left and
    some on the right: the loop bounds, not only the element mask, are exercised. (On a GPU the
    autotuner picks the tile; the shapes are chosen for the interpreter's.)"""
    if not INTERPRETED:
        return
    for cfg in kernels.kernel_configs("fwd"):
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        ranges = [_visited_key_range(r, bm, lq, lk, args) for r in range(0, lq, bm)]
        assert any(lo >= bn for lo, _ in ranges), f"no block skipped on the left with {cfg}"
        assert any(hi <= lk - bn for _, hi in ranges), f"no block skipped on the right with {cfg}"


# (name, causal, window_left, window_right)
WINDOWS = [("w32-0", False, 32, 0), ("w17-9", False, 17, 9), ("causal-w32", True, 32, -1)]
ALIGN = [True, False]
ALIGN_IDS = ["bottom-right", "top-left"]
# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim): Lq < Lk and Lq > Lk, BLOCK-crossing.
WINDOW_SHAPES = {True: (1, 4, 2, 150, 200, 40), False: (1, 3, 1, 200, 150, 59)}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bottom_right", ALIGN, ids=ALIGN_IDS)
@pytest.mark.parametrize("name,causal,left,right", WINDOWS, ids=[w[0] for w in WINDOWS])
def test_gqa_window_softcap(dtype, bottom_right, name, causal, left, right):
    """GQA 2:1 / 3:1 with a sliding window and softcap, forward and backward. Bottom-right runs
    Lq < Lk, top-left Lq > Lk, so that in top-left the last rows (past Lk + window) see no key
    (output 0, LSE +inf, no gradient)."""
    b, hq, hk, lq, lk, d = WINDOW_SHAPES[bottom_right]
    args = _args(d, causal=causal, bottom_right=bottom_right, window_left=left, window_right=right, softcap=4.0)
    _assert_skips_blocks(lq, lk, args)
    q, k, v = _qkv(b, hq, hk, lq, lk, d, dtype, seed=len(name) * 13 + lq)
    _check_fwd_bwd(q, k, v, args)


def test_gqa_window_softcap_rows_without_keys():
    """Top-left, Lq > Lk, window (32, 0): rows i >= Lk + 32 see no key: output 0, LSE +inf,
    and no gradient to them."""
    b, hq, hk, lq, lk, d = 1, 4, 2, 200, 120, 32
    q, k, v = _qkv(b, hq, hk, lq, lk, d, F16, seed=3)
    args = _args(d, bottom_right=False, window_left=32, window_right=0, softcap=3.0)
    out, lse, dq, dk, dv = _check_fwd_bwd(q, k, v, args)
    dead = slice(lk + 32, lq)
    assert torch.isinf(lse[:, :, dead]).all() and (lse[:, :, dead] > 0).all()
    assert torch.isfinite(lse[:, :, : lk + 32]).all()
    assert (out[:, :, dead] == 0).all() and (dq[:, :, dead] == 0).all()


# --------------------------------------------------------------------------- 2. varlen + causal + ALiBi

# (seqlen_q, seqlen_k) per sequence: a single token, Lq < Lk across key blocks, a causal
# bottom-right sequence whose first rows see no key (Lq > Lk), and a BLOCK-crossing Lq == Lk.
VARLEN_SEQS = [(1, 1), (100, 140), (33, 5), (70, 70)]
# name -> (AttentionArgs options, alibi slopes shape: "h" (H,) or "bh" (B, H))
VARLEN_OPTIONS = {
    "causal-alibi-h": (dict(causal=True), "h"),
    "causal-alibi-bh": (dict(causal=True), "bh"),
    "causal-alibi-bh-window-softcap": (dict(causal=True, window_left=40, softcap=5.0, deterministic=True), "bh"),
}


def _cu(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=DEVICE)


def _slopes(kind, batch, heads, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (heads,) if kind == "h" else (batch, heads)
    return (torch.rand(*shape, generator=g) * 0.3 + 0.02).to(DEVICE)


def _varlen_case(dtype, option, seqs=VARLEN_SEQS, heads=(4, 2), d=48, seed=5):
    lens_q, lens_k = [s[0] for s in seqs], [s[1] for s in seqs]
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    opts, alibi = VARLEN_OPTIONS[option]
    args = _args(d, bottom_right=True, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), **opts)
    q, k, v = _qkv(1, heads[0], heads[1], sum(lens_q), sum(lens_k), d, dtype, seed=seed)
    return q, k, v, args, cu_q, cu_k, _slopes(alibi, len(seqs), heads[0])


def _assert_same(name, got, want):
    """Per-sequence and packed runs use the same tiles over the same rows (same order of every
    sum), so under the interpreter they agree bit for bit; on a GPU the autotuner may pick a
    different tile for the varlen specialisation, so a few ulps of the result are allowed."""
    if INTERPRETED:
        assert torch.equal(got, want), f"{name}: varlen differs from the per-sequence call"
    else:
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite), f"{name}: inf pattern differs"
        scale = want[finite].abs().max().item() if finite.any() else 1.0
        eps = torch.finfo(want.dtype).eps
        torch.testing.assert_close(got, want, rtol=0, atol=8 * eps * max(scale, 1.0), msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", ["causal-alibi-h", "causal-alibi-bh"], ids=["alibi-h", "alibi-bh"])
def test_varlen_causal_alibi(dtype, option):
    """Packed sequences (GQA 2:1, ALiBi per head or per sequence and head) vs the float64
    reference, forward and backward (atomic dQ)."""
    q, k, v, args, cu_q, cu_k, slopes = _varlen_case(dtype, option, heads=(2, 1))
    out, lse, *_ = _check_fwd_bwd(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, alibi_slopes=slopes)
    # Sequence 2 (33 queries, 5 keys, causal bottom-right): its first 28 rows see no key.
    s2 = slice(int(cu_q[2]), int(cu_q[2]) + 28)
    assert torch.isinf(lse[:, :, s2]).all() and (out[:, :, s2] == 0).all()
    assert torch.isfinite(lse[:, :, int(cu_q[2]) + 28 :]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_varlen_equals_per_sequence_calls(dtype):
    """Varlen (GQA 2:1, causal, window, softcap, ALiBi (B, H), deterministic dQ) vs the float64
    reference, and equal to the per-sequence calls concatenated: output, LSE, dq, dk and dv."""
    q, k, v, args, cu_q, cu_k, slopes = _varlen_case(dtype, "causal-alibi-bh-window-softcap")
    out, lse, dq, dk, dv = _check_fwd_bwd(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                          alibi_slopes=slopes)
    dout = _randn(*out.shape, dtype=dtype, seed=99)  # the dout _check_fwd_bwd used
    for s in range(cu_q.numel() - 1):
        qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
        qq, kk, vv = q[:, :, qs], k[:, :, ks], v[:, :, ks]
        o1, l1 = kernels.attention_fwd(qq, kk, vv, args, alibi_slopes=slopes[s])
        g1 = kernels.attention_bwd(dout[:, :, qs], qq, kk, vv, o1, l1, args, alibi_slopes=slopes[s])
        for name, got, want in zip(("out", "lse", "dq", "dk", "dv"),
                                   (out[:, :, qs], lse[:, :, qs], dq[:, :, qs], dk[:, :, ks], dv[:, :, ks]),
                                   (o1, l1, *g1)):
            _assert_same(f"sequence {s} {name}", got, want)


def test_varlen_public_api_matches_per_sequence_flash_attn():
    """Through the public ops with autograd: ``flash_attn_varlen_func`` (GQA, causal, ALiBi
    ``(B, H)``) equals ``flash_attn_func`` per sequence and the float64 reference."""
    seqs = [(1, 1), (70, 130), (45, 45), (20, 3)]
    lens_q, lens_k = [s[0] for s in seqs], [s[1] for s in seqs]
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    hq, hk, d, dtype = 4, 1, 40, BF16
    q = _randn(sum(lens_q), hq, d, dtype=dtype, seed=1).requires_grad_()
    k = _randn(sum(lens_k), hk, d, dtype=dtype, seed=2).requires_grad_()
    v = _randn(sum(lens_k), hk, d, dtype=dtype, seed=3).requires_grad_()
    slopes = _slopes("bh", len(seqs), hq)
    out, lse, _ = fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                                  alibi_slopes=slopes, return_attn_probs=True, backend="triton")
    dout = _randn(*out.shape, dtype=dtype, seed=4)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    refs = []
    for upcast in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        o, l, _ = reference.flash_attn_varlen_func(*leaves, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                                   alibi_slopes=slopes, return_attn_probs=True, upcast=upcast)
        refs.append((o, l, *torch.autograd.grad(o, leaves, dout.to(o.dtype))))
    for name, got, r64, rlp, kind in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), *refs,
                                         ("out", "lse", "grad", "grad", "grad")):
        _assert_close(name, got, r64, rlp, kind, dtype)

    for s in range(len(seqs)):
        qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
        leaves = [t.detach()[sl].unsqueeze(0).requires_grad_() for t, sl in ((q, qs), (k, ks), (v, ks))]
        o1, l1, _ = fastattn.flash_attn_func(*leaves, causal=True, alibi_slopes=slopes[s], return_attn_probs=True,
                                             backend="triton")
        g1 = torch.autograd.grad(o1, leaves, dout[qs].unsqueeze(0))
        _assert_same(f"sequence {s} out", out[qs], o1[0])
        _assert_same(f"sequence {s} lse", lse[:, qs], l1[0])
        for name, got, want in zip(("dq", "dk", "dv"), (grads[0][qs], grads[1][ks], grads[2][ks]), g1):
            _assert_same(f"sequence {s} {name}", got, want[0])


# --------------------------------------------------------------------------- 3. KV cache + GQA + window

# run_kvcache_case options (tests/decode_cases.py): per-batch cache lengths with an empty cache,
# a cache shorter than the window and one far longer, appended tokens, several query rows.
KVCACHE = {
    "gqa4-w32-causal-append3": dict(batch=3, heads=8, heads_k=2, head_dim=40, seqlen_q=3, new=3, cache_len=256,
                                    lens=(0, 20, 250), causal=True, window=(32, 0)),
    "gqa3-w17-9-append2": dict(batch=2, heads=6, heads_k=2, head_dim=59, seqlen_q=4, new=2, cache_len=200,
                               lens=(150, 7), causal=False, window=(17, 9)),
    "mqa-w40-causal-softcap": dict(batch=2, heads=4, heads_k=1, head_dim=64, seqlen_q=1, new=1, cache_len=300,
                                   lens=(299, 120), causal=True, window=(40, 0), softcap=5.0),
    "gqa2-w24-causal-alibi-bh": dict(batch=2, heads=4, heads_k=2, head_dim=32, seqlen_q=2, new=2, cache_len=180,
                                     lens=(100, 178), causal=True, window=(24, 0), alibi="per_batch"),
    "gqa4-w64-softcap-alibi-h": dict(batch=2, heads=8, heads_k=2, head_dim=72, seqlen_q=2, new=0, cache_len=250,
                                     lens=(250, 90), causal=True, window=(64, 0), softcap=3.0, alibi="per_head"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", list(KVCACHE), ids=list(KVCACHE))
def test_kvcache_gqa_window(dtype, option):
    """The public op vs the float64 reference: output, LSE, and the in-place append (bit for bit;
    cache rows past each valid length are NaN and must be neither read nor written)."""
    run_kvcache_case("triton", dtype, **KVCACHE[option])


def _kvcache_inputs(dtype, batch, seqlen_q, heads, heads_k, head_dim, cache_len, lens, new):
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE).to(dtype)
    kc = poisoned_cache(batch, cache_len, heads_k, head_dim, lens, new, dtype, "contiguous")
    vc = poisoned_cache(batch, cache_len, heads_k, head_dim, lens, new, dtype, "contiguous")
    k_new = torch.randn(batch, new, heads_k, head_dim, device=DEVICE).to(dtype)
    v_new = torch.randn(batch, new, heads_k, head_dim, device=DEVICE).to(dtype)
    return q, kc, vc, k_new, v_new, torch.tensor(lens, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kvcache_append_then_attend_equals_concatenated_cache(dtype):
    """Appending k/v then attending gives exactly (bit for bit: the same kernel over the same
    keys) what attending over a cache that already holds them gives, with ``cache_seqlens``
    grown by Lnew and nothing appended; the appended cache equals the concatenation."""
    lens, new = (0, 61, 130), 5
    q, kc, vc, k_new, v_new, seqlens = _kvcache_inputs(dtype, 3, 5, 6, 2, 48, 160, lens, new)
    slopes = torch.rand(3, 6, device=DEVICE) * 0.2
    opts = dict(causal=True, window_size=(50, 0), softcap=6.0, alibi_slopes=slopes, return_softmax_lse=True)

    kc_cat, vc_cat = kc.clone(), vc.clone()
    for b, n in enumerate(lens):
        kc_cat[b, n : n + new], vc_cat[b, n : n + new] = k_new[b], v_new[b]
    ref = [reference_kvcache(q, kc, vc, k_new, v_new, ct, dict(opts, cache_seqlens=seqlens))
           for ct in (torch.float64, dtype)]

    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=seqlens, backend="triton",
                                                **opts)
    out_cat, lse_cat = fastattn.flash_attn_with_kvcache(q, kc_cat, vc_cat, cache_seqlens=seqlens + new,
                                                        backend="triton", **opts)
    assert torch.equal(bits(kc), bits(kc_cat)) and torch.equal(bits(vc), bits(vc_cat))
    assert torch.equal(out, out_cat) and torch.equal(lse, lse_cat)
    check(out, lse, *ref)


class _GridSpy:
    """Wraps a Triton kernel and records the grid of every launch."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


# (name, forced split count): the launcher rounds each split up to whole key blocks, so it may
# use fewer splits than asked; the spy checks that the forced runs really split.
SPLITS = [("s3", 3), ("s9", 9)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,splits", SPLITS, ids=[s[0] for s in SPLITS])
def test_kvcache_split_equals_unsplit(dtype, name, splits, monkeypatch):
    """Split-KV equals the unsplit kernel with GQA, a window, softcap, ALiBi and an append, the
    split count forced through the public op as tests/test_triton_decode.py does. LSEs and fp32
    outputs to fp32 rounding (partials and merge are fp32); fp16/bf16 outputs to one epsilon of
    the output's scale (see below). Both runs are also checked against the float64 reference
    (and their appends bit for bit) by run_kvcache_case."""
    spy = _GridSpy(decode_kernels._decode_split_kernel)
    monkeypatch.setattr(decode_kernels, "_decode_split_kernel", spy)
    case = dict(batch=2, heads=4, heads_k=2, head_dim=64, seqlen_q=2, new=2, cache_len=450, lens=(440, 201),
                causal=True, window=(300, 0), softcap=4.0, alibi="per_batch")
    results = []
    for n in (1, splits):
        monkeypatch.setattr(decode_kernels, "choose_num_splits", lambda *a, n=n: n)
        torch.manual_seed(11)  # the same inputs for both runs
        results.append(run_kvcache_case("triton", dtype, **case))
    used = [grid[0] for grid in spy.grids]
    assert used[0] == 1 and used[1] > 2, f"split counts launched: {used}"
    (o1, l1), (o2, l2) = results
    torch.testing.assert_close(l2, l1, atol=1e-6, rtol=1e-6)  # LSEs: fp32 throughout
    if dtype == F32:
        torch.testing.assert_close(o2, o1, atol=1e-6, rtol=1e-5)
    else:
        # Partials and merge are fp32; the runs differ only where each split rounds its probabilities
        # to 16 bits against its own running max (eps/2 relative each, averaging out over the keys)
        # and in the final rounding (eps/2 at the output's scale). One eps at the output's scale is
        # tight: these runs differ by under a tenth of it.
        err = (o2.double() - o1.double()).abs().max().item()
        bound = torch.finfo(dtype).eps * o1.double().abs().max().item()
        assert err <= bound, f"split vs unsplit: {err:.3g} > {bound:.3g}"


# --------------------------------------------------------------------------- 4. SDPA masks + GQA + softcap


def _mask(kind, shape_name, b, lq, lk, dtype, seed):
    """A mask of ``kind`` ("bool" or "float") broadcast as ``shape_name``: ``(B,1,1,S)`` (padding:
    batch 1 keeps only its first 23 keys, batch 0 all but the last 9) or ``(1,1,L,S)`` (random,
    row 5 fully masked when bool)."""
    g = torch.Generator().manual_seed(seed)
    if shape_name == "b11s":
        keep = torch.ones(b, 1, 1, lk, dtype=torch.bool)
        keep[0, ..., lk - 9 :] = False
        keep[1, ..., 23:] = False
    else:
        keep = torch.rand(1, 1, lq, lk, generator=g) > 0.35
        keep[..., 5, :] = kind == "float"  # a fully masked row (bool only: the oracle's float grad there is NaN)
    if kind == "bool":
        return keep.to(DEVICE)
    values = torch.randn(keep.shape, generator=g).to(dtype)
    return values.masked_fill(~keep, float("-inf")).to(DEVICE)


MASK_KINDS = ["bool", "float"]
MASK_SHAPES = ["b11s", "11ls"]
# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim)
MASK_SHAPE = (2, 4, 2, 70, 100, 40)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", MASK_KINDS, ids=MASK_KINDS)
@pytest.mark.parametrize("shape_name", MASK_SHAPES, ids=["mask-B11S", "mask-11LS"])
def test_sdpa_mask_gqa_softcap(dtype, kind, shape_name):
    """attn_mask read by zero strides (no expanded copy) with GQA 2:1 and softcap, forward and
    backward; fully masked rows give 0 and LSE +inf with no gradient. A float mask's gradient
    (``mask_grad=True``: the mask as broadcast to ``(B, Hq, Lq, Lk)``, i.e. dS after the softcap)
    against autograd through the reference, and the same dq/dk/dv as without it."""
    b, hq, hk, lq, lk, d = MASK_SHAPE
    q, k, v = _qkv(b, hq, hk, lq, lk, d, dtype, seed=17)
    mask = _mask(kind, shape_name, b, lq, lk, dtype, seed=2)
    args = _args(d, softcap=2.5)
    out, lse, dq, dk, dv = _check_fwd_bwd(q, k, v, args, attn_mask=mask)
    if kind == "bool" and shape_name == "11ls":
        assert torch.isinf(lse[:, :, 5]).all() and (out[:, :, 5] == 0).all() and (dq[:, :, 5] == 0).all()
    if kind == "bool":
        return
    dout = _randn(*out.shape, dtype=dtype, seed=99)  # the dout _check_fwd_bwd used
    *grads, dmask = kernels.attention_bwd(dout, q, k, v, out, lse, args, attn_mask=mask, mask_grad=True)
    for name, got, want in zip(("dq", "dk", "dv"), grads, (dq, dk, dv)):
        _assert_same(f"{name} with mask_grad", got, want)
    assert dmask.shape == (b, hq, lq, lk) and dmask.dtype == dtype
    refs = []
    for ct in (torch.float64, dtype):
        leaves = [t.to(ct).requires_grad_() for t in (q, k, v, mask.expand(b, hq, lq, lk).contiguous())]
        ref_out, _ = reference.attention(*leaves[:3], args, attn_mask=leaves[3])
        refs.append(torch.autograd.grad(ref_out, leaves[3], dout.to(ct))[0])
    _assert_close("dmask", dmask, refs[0], refs[1], "grad", dtype)
    assert (dmask.masked_select(torch.isinf(mask.expand_as(dmask))) == 0).all(), "masked keys get no gradient"


def test_mask_with_every_feature():
    """Every score feature at once (the AOT "features" specialisation): an additive mask, GQA,
    softcap, ALiBi ``(B, H)``, a causal window, bottom-right, Lq != Lk."""
    b, hq, hk, lq, lk, d = 2, 4, 2, 90, 140, 64
    q, k, v = _qkv(b, hq, hk, lq, lk, d, F16, seed=23)
    # Random -inf entries but no row whose visible keys are all -inf (the oracle's gradient there is NaN).
    mask = _mask("float", "11ls", 1, lq, lk, F16, seed=3)
    args = _args(d, causal=True, bottom_right=True, window_left=45, softcap=3.0)
    _check_fwd_bwd(q, k, v, args, attn_mask=mask, alibi_slopes=_slopes("bh", b, hq))


@pytest.mark.parametrize("dtype", [F16, F32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("kind", MASK_KINDS, ids=MASK_KINDS)
def test_public_sdpa_mask_gqa(dtype, kind):
    """``fastattn.scaled_dot_product_attention(..., enable_gqa=True, backend="triton")`` with a
    ``(B,1,1,S)`` mask and autograd, against the float64 reference."""
    b, hq, hk, lq, lk, d = MASK_SHAPE
    q, k, v = (t.requires_grad_() for t in _qkv(b, hq, hk, lq, lk, d, dtype, seed=29))
    mask = _mask(kind, "b11s", b, lq, lk, dtype, seed=4)
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, backend="triton")
    dout = _randn(*out.shape, dtype=dtype, seed=5)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    refs = []
    for upcast in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        o = reference.scaled_dot_product_attention(*leaves, attn_mask=mask, enable_gqa=True, upcast=upcast)
        refs.append((o, *torch.autograd.grad(o, leaves, dout.to(o.dtype))))
    for name, got, r64, rlp, kind_ in zip(("out", "dq", "dk", "dv"), (out, *grads), *refs,
                                          ("out", "grad", "grad", "grad")):
        _assert_close(name, got, r64, rlp, kind_, dtype)


# --------------------------------------------------------------------------- slow cross-products

SLOW_HEADS = [(4, 4), (6, 2), (8, 1)]
SLOW_DIMS = [16, 59, 128]
SLOW_WINDOWS = [(32, 0), (17, 9), (0, 0), (-1, 20), (100, -1)]
SLOW_SEQS = [(129, 257), (257, 129), (200, 200)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bottom_right", ALIGN, ids=ALIGN_IDS)
@pytest.mark.parametrize("window", SLOW_WINDOWS, ids=[f"w{l}-{r}" for l, r in SLOW_WINDOWS])
@pytest.mark.parametrize("seqs", SLOW_SEQS, ids=[f"q{a}-k{b}" for a, b in SLOW_SEQS])
def test_window_cross_product_slow(dtype, bottom_right, window, seqs):
    """Windows x alignments x seqlens x dtypes; heads, head dim, causal, softcap and ALiBi cycle
    over the grid so that each meets every window without multiplying the run time."""
    i = SLOW_WINDOWS.index(window) + SLOW_SEQS.index(seqs) + DTYPES.index(dtype)
    (hq, hk), d = SLOW_HEADS[i % 3], SLOW_DIMS[(i // 3) % 3]
    causal = i % 2 == 1 and window[1] != -1
    args = _args(d, causal=causal, bottom_right=bottom_right, window_left=window[0], window_right=window[1],
                 softcap=[0.0, 4.0][i % 2])
    q, k, v = _qkv(1, hq, hk, seqs[0], seqs[1], d, dtype, seed=i)
    slopes = _slopes(["h", "bh"][i % 2], 1, hq) if i % 3 else None
    _check_fwd_bwd(q, k, v, args, alibi_slopes=slopes)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads", SLOW_HEADS, ids=[f"h{a}:{b}" for a, b in SLOW_HEADS])
@pytest.mark.parametrize("window", [(-1, -1), (30, -1)], ids=["nowindow", "w30"])
def test_varlen_cross_product_slow(dtype, heads, window):
    """Varlen + causal + ALiBi (B, H) over head layouts x dtypes, with and without a window and
    softcap; sequences of 1 query over 90 keys and Lq > Lk whose first rows see no key."""
    seqs = [(1, 1), (129, 257), (64, 64), (1, 90), (77, 12), (200, 199)]
    q, k, v, args, cu_q, cu_k, slopes = _varlen_case(dtype, "causal-alibi-bh", seqs=seqs, heads=heads, d=72)
    args = AttentionArgs(**{**args.__dict__, "window_left": window[0], "softcap": 0.0 if window[0] < 0 else 5.0})
    _check_fwd_bwd(q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, alibi_slopes=slopes)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads", SLOW_HEADS, ids=[f"h{a}:{b}" for a, b in SLOW_HEADS])
@pytest.mark.parametrize("window", [(0, 0), (16, 0), (100, 0), (33, 7)], ids=["w0-0", "w16-0", "w100-0", "w33-7"])
def test_kvcache_cross_product_slow(dtype, heads, window):
    """Head layouts x windows x dtypes; softcap / ALiBi (H,) / ALiBi (B, H) / none cycle."""
    i = DTYPES.index(dtype) + SLOW_HEADS.index(heads) + [(0, 0), (16, 0), (100, 0), (33, 7)].index(window)
    extra = ["plain", "softcap", "alibi-h", "alibi-bh"][i % 4]
    run_kvcache_case("triton", dtype, batch=3, heads=heads[0], heads_k=heads[1], head_dim=48, seqlen_q=3, new=2,
                     cache_len=400, lens=(0, 150, 398), causal=window[1] == 0, window=window,
                     softcap=5.0 if extra == "softcap" else 0.0,
                     alibi={"alibi-h": "per_head", "alibi-bh": "per_batch"}.get(extra))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", MASK_KINDS, ids=MASK_KINDS)
@pytest.mark.parametrize("shape_name", MASK_SHAPES + ["b1ls", "bhls"], ids=["B11S", "11LS", "B1LS", "BHLS"])
def test_mask_cross_product_slow(dtype, kind, shape_name):
    """Mask kinds x broadcast shapes x dtypes (Lq > Lk, odd head dim); the head layout cycles."""
    heads = SLOW_HEADS[(DTYPES.index(dtype) + ["b11s", "11ls", "b1ls", "bhls"].index(shape_name)) % 3]
    b, lq, lk, d = 2, 130, 75, 59
    q, k, v = _qkv(b, heads[0], heads[1], lq, lk, d, dtype, seed=41)
    if shape_name in ("b1ls", "bhls"):
        g = torch.Generator().manual_seed(7)
        keep = torch.rand(b, heads[0] if shape_name == "bhls" else 1, lq, lk, generator=g) > 0.3
        mask = keep.to(DEVICE) if kind == "bool" else (
            torch.randn(keep.shape, generator=g).masked_fill(~keep, float("-inf")).to(dtype).to(DEVICE))
    else:
        mask = _mask(kind, shape_name, b, lq, lk, dtype, seed=8)
    _check_fwd_bwd(q, k, v, _args(d, softcap=3.0), attn_mask=mask)
