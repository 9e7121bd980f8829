"""KV-cache decoding on the native CPU attention (fastattn/backends/cpu/kvcache.py, backend
"cpu") through ``fastattn.flash_attn_with_kvcache``, against
fastattn.reference.flash_attn_with_kvcache in float64.

flash-attn semantics: cache_seqlens per batch (0 included), in-place append of new k/v,
GQA/MQA, causal and windows aligned bottom-right, softcap, ALiBi ``(H,)`` and ``(B, H)``,
a row that sees no key gives 0 and an LSE of +inf. The append must write exactly its rows
(checked bit for bit against the cache with those rows set by hand); cache rows past the
valid length hold NaN and must never be read; outputs are NaN-poisoned (torch's
``fill_uninitialized_memory``), so an element left unwritten fails. fp32 to 1e-5 of the
output's scale; fp16/bf16 by flash-attn's error-ratio rule against the reference run in
the input dtype. Up to 8 query rows run on the decoding kernel (one call for the whole
ragged batch, caches read in place, long caches split across threads and merged by their
LSE: checked with 1 and 2 threads, every ISA, every dtype); longer queries on the forward
kernel, where calls split to bound the native pack buffer (by batch element, then by kv
head group) and windows that skip the cache's head give the same answers. Also: ``auto``
picks this backend for CPU tensors and falls back to the reference for what it declines,
which ``backend="cpu"`` names in a ValueError.
"""
from __future__ import annotations

from dataclasses import astuple

import pytest
import torch

import fastattn
from fastattn import dispatch, reference
from fastattn.attention_args import AttentionArgs

cpu = pytest.importorskip("fastattn.backends.cpu.attention", reason="fastattn._C (native CPU kernels) not built")
from fastattn.backends.cpu import kvcache as cpu_kvcache  # noqa: E402  (needs the native kernels above)

_ORDER = ["avx2", "avx512", "avx512bf16"]
BEST_ISA = cpu.isa()
ISAS = _ORDER[: _ORDER.index(BEST_ISA) + 1] if BEST_ISA in _ORDER else []
if not ISAS:
    pytest.skip("this CPU has neither AVX2+FMA nor AVX-512", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
FLOOR = {"out": 1e-5, "lse": 1e-4}
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture(autouse=True)
def poison(poisoned):
    """Fresh seed; every ``torch.empty`` (the backend's outputs included) filled with NaN
    (conftest's ``poisoned``)."""
    yield



def assert_matches(got, ref64, ref_lowp, kind, dtype):
    """fp32: 1e-5 relative; fp16/bf16: ``max|got - ref64| <= 2 * max|ref_lowp - ref64| + floor``.
    Infinite reference entries (LSE of rows that see no key) must be matched exactly."""
    assert got.shape == ref64.shape, f"{kind}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(got).any(), f"{kind}: NaN (an element never written, or a poisoned row read)"
    got, ref64, ref_lowp = got.double(), ref64.double(), ref_lowp.double()
    finite = torch.isfinite(ref64)
    assert torch.equal(got[~finite], ref64[~finite]), f"{kind}: infinities differ from the reference"
    if not finite.any():
        return
    err = (got - ref64)[finite].abs().max().item()
    scale = ref64[finite].abs().max().item()
    if dtype == torch.float32:
        tol = 1e-5 * max(scale, 1.0)
    else:
        tol = 2 * (ref_lowp - ref64)[finite].abs().max().item() + FLOOR[kind]
    assert err <= tol, f"{kind}: max error {err:.3g} > tolerance {tol:.3g}"


def _bits(t):
    return t.contiguous().view(_BITS[t.dtype])


def _poisoned_cache(batch, cache_len, heads_k, dim, lens, new, dtype, layout):
    """A cache whose rows past ``lens[b] + new`` (never to be read nor written) hold NaN.
    ``layout="heads_first"``: a (B, Hk, L, D) buffer seen as (B, L, Hk, D) by strides."""
    if layout == "heads_first":
        cache = torch.randn(batch, heads_k, cache_len, dim).to(dtype).transpose(1, 2)
    else:
        cache = torch.randn(batch, cache_len, heads_k, dim).to(dtype)
    for b, n in enumerate(lens):
        cache[b, n + new:] = float("nan")
    return cache


def _reference(q, k_cache, v_cache, k_new, v_new, ct, opts):
    """The reference in float64 (upcast) or in ``ct`` (the low-precision run), on copies of the
    caches (it appends too). ALiBi slopes stay fp32 in the low-precision run, as kernels read them."""
    opts = dict(opts)
    slopes = opts.pop("alibi_slopes")
    upcast = ct == torch.float64
    if slopes is not None:
        slopes = slopes.double() if upcast else slopes
    cast = (lambda t: t) if upcast else (lambda t: None if t is None else t.to(ct))
    out, lse = reference.flash_attn_with_kvcache(
        cast(q), cast(k_cache.clone()), cast(v_cache.clone()), cast(k_new), cast(v_new),
        alibi_slopes=slopes, upcast=upcast, **opts)
    return out, lse


def run_case(dtype, batch=2, seqlen_q=1, heads=4, heads_k=2, head_dim=64, head_dim_v=None, cache_len=300,
             lens=(100, 250), new=0, causal=True, window=(-1, -1), softcap=0.0, alibi=None, layout="contiguous",
             strided_q=False, backend="cpu"):
    """One ``flash_attn_with_kvcache`` call on fresh inputs, checked against the reference:
    the output, the LSE, and the caches bit for bit (appended rows set, nothing else written)."""
    head_dim_v = head_dim_v or head_dim
    if strided_q:  # a (B, Hq, Lq, D) buffer seen as (B, Lq, Hq, D): taken by strides
        q = torch.randn(batch, heads, seqlen_q, head_dim).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(batch, seqlen_q, heads, head_dim).to(dtype)
    k_cache = _poisoned_cache(batch, cache_len, heads_k, head_dim, lens, new, dtype, layout)
    v_cache = _poisoned_cache(batch, cache_len, heads_k, head_dim_v, lens, new, dtype, layout)
    k_new = v_new = None
    if new:
        k_new = torch.randn(batch, new, heads_k, head_dim).to(dtype)
        v_new = torch.randn(batch, new, heads_k, head_dim_v).to(dtype)
    slopes = None
    if alibi == "per_head":
        slopes = torch.rand(heads) * 0.3
    elif alibi == "per_batch":
        slopes = torch.rand(batch, heads) * 0.3
    opts = dict(cache_seqlens=torch.tensor(lens, dtype=torch.int32), causal=causal, window_size=window,
                softcap=softcap, alibi_slopes=slopes, return_softmax_lse=True)

    (o64, l64), (olp, llp) = (_reference(q, k_cache, v_cache, k_new, v_new, ct, opts) for ct in (torch.float64, dtype))
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    if new:  # the in-place append the backend must reproduce, bit for bit, and nothing else
        for b, n in enumerate(lens):
            kc_ref[b, n : n + new], vc_ref[b, n : n + new] = k_new[b], v_new[b]

    out, lse = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, backend=backend, **opts)
    assert out.dtype == dtype and out.shape == (batch, seqlen_q, heads, head_dim_v)
    assert lse.dtype == torch.float32 and lse.shape == (batch, heads, seqlen_q)
    assert torch.equal(_bits(k_cache), _bits(kc_ref)) and torch.equal(_bits(v_cache), _bits(vc_ref)), \
        "the append must write exactly rows cache_seqlens[b] .. + Lnew"
    assert_matches(out, o64, olp, "out", dtype)
    assert_matches(lse, l64, llp.float(), "lse", dtype)
    return out, lse


# ------------------------------------------------------------------------------ numerics

HEADS = [(4, 2, 64), (6, 1, 59), (2, 2, 128), (2, 1, 1), (4, 2, 256)]
HEADS_IDS = ["gqa-d64", "mqa-d59", "mha-d128", "gqa-d1", "gqa-d256"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k,head_dim", HEADS, ids=HEADS_IDS)
def test_decode_gqa_head_dims(dtype, heads, heads_k, head_dim):
    run_case(dtype, heads=heads, heads_k=heads_k, head_dim=head_dim, new=1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("head_dim", [1, 16, 59, 64, 111, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_decode_full_grid(dtype, heads, heads_k, head_dim, causal):
    run_case(dtype, batch=3, heads=heads, heads_k=heads_k, head_dim=head_dim, causal=causal, new=2, seqlen_q=3,
             lens=(113, 0, 257), cache_len=300, window=(64, -1), alibi="per_batch")


APPEND = [(0, 1, True), (1, 1, True), (3, 4, True), (3, 2, False)]
APPEND_IDS = ["new0-q1", "new1-q1-causal", "new3-q4-causal", "new3-q2-full"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("new,seqlen_q,causal", APPEND, ids=APPEND_IDS)
def test_decode_append_and_causal(dtype, new, seqlen_q, causal):
    """Lnew 0/1/3 with per-batch lengths 0, 1 and 117 (with new=0, batch 0 sees no key)."""
    run_case(dtype, batch=3, heads=2, heads_k=1, seqlen_q=seqlen_q, new=new, causal=causal, lens=(0, 1, 117),
             cache_len=128, head_dim=40)


OPTIONS = {
    "window": dict(window=(32, 0)),
    "window_right": dict(window=(20, 5), causal=False, seqlen_q=3),
    "window_alibi_append": dict(window=(30, 0), alibi="per_batch", seqlen_q=3, new=2),
    "softcap": dict(softcap=5.0),
    "alibi_head": dict(alibi="per_head"),
    "alibi_batch": dict(alibi="per_batch", causal=False, seqlen_q=2),
    "dv": dict(head_dim=40, head_dim_v=72),
    "gqa_window_softcap": dict(heads=8, heads_k=2, window=(40, 0), softcap=3.0, new=2, seqlen_q=2),
    "heads_first_cache": dict(layout="heads_first", new=1, head_dim=111),
    "strided_q_heads_first": dict(layout="heads_first", strided_q=True, seqlen_q=2, new=2, alibi="per_head"),
    "long_q": dict(seqlen_q=70, new=70, lens=(30, 200), causal=True, head_dim=32),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
def test_decode_options(dtype, option):
    run_case(dtype, **OPTIONS[option])


@pytest.mark.parametrize("isa", ISAS, ids=ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_every_isa(use_isa, isa, dtype):
    """Each instruction set this CPU has (AVX2, AVX-512, AVX-512+BF16 dot products)."""
    use_isa(isa)
    run_case(dtype, batch=3, heads=8, heads_k=2, head_dim=72, lens=(5, 130, 130), cache_len=140, new=1,
             softcap=4.0, alibi="per_batch")


def test_decode_rows_that_see_no_key():
    """More queries than keys, causal bottom-right: the first rows of batch 0 see no key."""
    out, lse = run_case(torch.float32, seqlen_q=4, lens=(2, 50), causal=True, cache_len=64)
    assert (out[0, :2] == 0).all() and torch.isinf(lse[0, :, :2]).all() and (lse[0, :, :2] > 0).all()
    assert torch.isfinite(lse[0, :, 2:]).all()


def test_decode_empty_cache():
    """cache_seqlens = 0 and nothing appended: no key at all, output 0, lse +inf."""
    out, lse = run_case(torch.float32, batch=3, lens=(0, 5, 0), cache_len=16, causal=False)
    for b in (0, 2):
        assert (out[b] == 0).all() and torch.isinf(lse[b]).all() and (lse[b] > 0).all()
    assert torch.isfinite(lse[1]).all()


def test_decode_all_caches_empty_with_int_seqlens():
    """cache_seqlens given as an int 0 and nothing appended: every batch element sees no key."""
    q, kc, vc = torch.randn(2, 1, 2, 16), torch.randn(2, 8, 1, 16), torch.randn(2, 8, 1, 16)
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=0, return_softmax_lse=True, backend="cpu")
    assert (out == 0).all() and torch.isinf(lse).all() and (lse > 0).all()


def test_window_never_reads_keys_left_of_it():
    """With a sliding window, cache rows left of every query's window are not read at all:
    NaN there leaves the result equal to the reference on the unpoisoned cache."""
    lens, new, window = (200, 90), 1, (40, 0)
    q = torch.randn(2, 2, 4, 32)
    kc, vc = torch.randn(2, 256, 2, 32), torch.randn(2, 256, 2, 32)
    k_new, v_new = torch.randn(2, new, 2, 32), torch.randn(2, new, 2, 32)
    slopes = torch.rand(2, 4) * 0.2
    opts = dict(cache_seqlens=torch.tensor(lens, dtype=torch.int32), causal=True, window_size=window,
                alibi_slopes=slopes, return_softmax_lse=True)
    o64, l64 = _reference(q, kc, vc, k_new, v_new, torch.float64, opts)
    kp, vp = kc.clone(), vc.clone()
    for b, n in enumerate(lens):
        first = n + new - q.shape[1] - window[0]  # the first key row 0 of the queries sees
        kp[b, :first], vp[b, :first] = float("nan"), float("nan")
        kp[b, n + new:], vp[b, n + new:] = float("nan"), float("nan")
    out, lse = fastattn.flash_attn_with_kvcache(q, kp, vp, k_new, v_new, backend="cpu", **opts)
    assert_matches(out, o64, o64, "out", torch.float32)
    assert_matches(lse, l64, l64, "lse", torch.float32)


def test_equal_lengths_share_one_native_call(monkeypatch):
    """Consecutive batch elements with the same key count are one native call; empty ones none;
    the result equals the reference either way."""
    calls = []
    real = cpu._C

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def cpu_attention_fwd(self, spec):
            calls.append((spec["batch"], spec["seqlen_k"]))
            return real.cpu_attention_fwd(spec)

    monkeypatch.setattr(cpu, "_C", Spy())
    monkeypatch.setattr(cpu_kvcache, "DECODE_MAX_QUERY_ROWS", 0)  # the forward kernel's path
    run_case(torch.float32, batch=7, lens=(50, 50, 50, 7, 0, 0, 50), cache_len=64, heads=4, heads_k=1,
             head_dim=32, seqlen_q=2)
    assert calls == [(3, 50), (1, 7), (1, 50)]


@pytest.mark.parametrize("budget_heads,expected", [
    (8, [(2, 4, 8), (1, 4, 8)]),  # two whole batch elements fit in one call
    (2, [(1, 2, 4)] * 6),  # one batch element is over: groups of 2 kv heads (4 query heads)
    (0, [(1, 1, 2)] * 12),  # below one kv head: one kv head a call, never none
], ids=["batches", "kv_head_groups", "single_kv_heads"])
def test_large_calls_are_split_within_the_pack_budget(monkeypatch, budget_heads, expected):
    """Each native call packs at most PACK_BUDGET_BYTES of keys/values: whole batch elements
    when they fit, else groups of kv heads (with their GQA query heads, ALiBi slopes, output
    and LSE slices); the result still equals the reference."""
    calls = []
    real = cpu._C

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def cpu_attention_fwd(self, spec):
            calls.append((spec["batch"], spec["heads_k"], spec["heads_q"]))
            return real.cpu_attention_fwd(spec)

    # One (batch element, kv head) packs 128 keys x (32 + 48) dims x 4 bytes.
    monkeypatch.setattr(cpu_kvcache, "PACK_BUDGET_BYTES", budget_heads * 128 * 80 * 4)
    monkeypatch.setattr(cpu_kvcache, "DECODE_MAX_QUERY_ROWS", 0)  # the forward kernel's path
    monkeypatch.setattr(cpu, "_C", Spy())
    run_case(torch.float32, batch=3, heads=8, heads_k=4, head_dim=32, head_dim_v=48, lens=(90, 90, 90),
             cache_len=100, new=2, seqlen_q=2, window=(50, 0), alibi="per_batch")
    assert calls == expected


def test_core_op_per_head_slopes_split_over_kv_heads(monkeypatch):
    """The core op also takes ALiBi slopes ``(Hq,)`` (the public op broadcasts them to
    ``(B, Hq)``): sliced per kv-head group like the rest when a call is split."""
    monkeypatch.setattr(cpu_kvcache, "PACK_BUDGET_BYTES", 1)  # one kv head a call
    monkeypatch.setattr(cpu_kvcache, "DECODE_MAX_QUERY_ROWS", 0)  # the forward kernel's path
    q = torch.randn(2, 3, 6, 24)
    kc, vc = torch.randn(2, 70, 3, 24), torch.randn(2, 70, 3, 24)
    lens = torch.tensor([64, 33], dtype=torch.int32)
    slopes = torch.rand(6) * 0.3
    args = AttentionArgs(scale=0.2, causal=True, bottom_right=True, softcap=6.0)
    out, lse = cpu_kvcache.kvcache_fwd(q, kc, vc, None, None, lens, alibi_slopes=slopes, args=args)
    o64, l64 = _reference(q, kc, vc, None, None, torch.float64, dict(
        cache_seqlens=lens, softmax_scale=0.2, causal=True, softcap=6.0, alibi_slopes=slopes,
        return_softmax_lse=True))
    assert_matches(out, o64, o64, "out", torch.float32)
    assert_matches(lse, l64, l64, "lse", torch.float32)


# ------------------------------------------------------------------------------ decoding kernel


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    """The kernels' thread count (torch's intra-op threads): one, and two (split key ranges)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


SPLIT = {  # long ragged caches: with two threads each long one is split and merged by its LSE
    "plain": dict(),
    "window": dict(window=(700, 0), seqlen_q=3, new=3),
    "softcap_alibi": dict(softcap=4.0, alibi="per_batch", seqlen_q=2, new=2),
    "window_right": dict(window=(900, 2), causal=False, seqlen_q=4, new=1, alibi="per_head"),
}


@pytest.mark.parametrize("isa", ISAS, ids=ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", list(SPLIT), ids=list(SPLIT))
def test_decoding_kernel_split_kv(use_isa, isa, dtype, option, threads):
    """Caches of 2049, 0 and 1301 keys (one empty), GQA 8/2, head dim 72 (a vector tail on
    every ISA), each ISA, 1 and 2 threads: the split-KV merge and the ragged lengths."""
    use_isa(isa)
    opts = dict(batch=3, heads=8, heads_k=2, head_dim=72, lens=(2048, 0, 1300), cache_len=2100, new=1)
    opts.update(SPLIT[option])
    run_case(dtype, **opts)


@pytest.mark.parametrize("heads,heads_k,head_dim,head_dim_v", [(32, 8, 128, 128), (4, 1, 64, 40), (3, 3, 17, 256)],
                         ids=["gqa4-d128", "mqa-d64-dv40", "mha-d17-dv256"])
def test_decoding_kernel_head_shapes(heads, heads_k, head_dim, head_dim_v, threads):
    run_case(torch.float32, batch=2, heads=heads, heads_k=heads_k, head_dim=head_dim, head_dim_v=head_dim_v,
             lens=(1500, 700), cache_len=1600, new=1, seqlen_q=1)


def _spy_native(monkeypatch):
    calls = []
    real = cpu._C

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def cpu_attention_fwd(self, spec):
            calls.append("forward")
            return real.cpu_attention_fwd(spec)

        def cpu_decode_fwd(self, spec):
            calls.append("decode")
            return real.cpu_decode_fwd(spec)

    monkeypatch.setattr(cpu, "_C", Spy())
    return calls


@pytest.mark.parametrize("seqlen_q,expected", [(1, ["decode"]), (8, ["decode"]), (9, ["forward"] * 2)],
                         ids=["q1", "q8", "q9"])
def test_few_query_rows_take_the_decoding_kernel(monkeypatch, seqlen_q, expected):
    """Up to DECODE_MAX_QUERY_ROWS query rows: one decoding call for the whole ragged batch,
    reading the caches in place; more rows: the forward kernel, one call per length run."""
    calls = _spy_native(monkeypatch)
    run_case(torch.float32, batch=2, lens=(40, 90), cache_len=100, seqlen_q=seqlen_q, new=0)
    assert calls == expected


def test_decoding_kernel_never_reads_past_the_keys_or_left_of_the_window():
    """NaN in every cache row a query cannot see (left of the window, past the keys) leaves
    the decoding kernel's result equal to the reference on clean caches."""
    lens, window = (1800, 300), (600, 0)
    q = torch.randn(2, 1, 4, 64)
    kc, vc = torch.randn(2, 2000, 2, 64), torch.randn(2, 2000, 2, 64)
    opts = dict(cache_seqlens=torch.tensor(lens, dtype=torch.int32), causal=True, window_size=window,
                return_softmax_lse=True)
    o64, l64 = _reference(q, kc, vc, None, None, torch.float64, {**opts, "alibi_slopes": None})
    for b, n in enumerate(lens):
        kc[b, : max(0, n - 1 - window[0])] = float("nan")
        vc[b, : max(0, n - 1 - window[0])] = float("nan")
        kc[b, n:], vc[b, n:] = float("nan"), float("nan")
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, backend="cpu", **opts)
    assert_matches(out, o64, o64, "out", torch.float32)
    assert_matches(lse, l64, l64, "lse", torch.float32)


# ------------------------------------------------------------------------------ dispatch


def _kv_inputs(dtype):
    q = torch.randn(2, 1, 4, 32).to(dtype)
    kc, vc = torch.randn(2, 40, 2, 32).to(dtype), torch.randn(2, 40, 2, 32).to(dtype)
    return q, kc, vc, torch.tensor([17, 33], dtype=torch.int32)


def _selected(monkeypatch):
    picked = []
    real = dispatch.select

    def spy(*a, **k):
        picked.append(real(*a, **k))
        return picked[-1]

    monkeypatch.setattr(dispatch, "select", spy)
    return picked


def test_cpu_backend_registers_kvcache():
    assert dispatch.implementations("kvcache_fwd")["cpu"].fn is cpu_kvcache.kvcache_fwd


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_auto_picks_cpu_for_cpu_tensors(monkeypatch, dtype):
    """Where the measured crossover prefers the native kernel (tests/test_cpu_decode_crossover.py
    covers the cases where torch's flash kernel is faster)."""
    from fastattn.backends.cpu import decode_crossover as cpu_decode_crossover

    monkeypatch.setattr(cpu_decode_crossover, "prefer_torch", lambda *a: False)
    calls = _spy_native(monkeypatch)
    q, kc, vc, lens = _kv_inputs(dtype)
    out = fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
    assert calls == ["decode"]
    ref = reference.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True, upcast=True)
    lowp = reference.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
    assert_matches(out, ref, lowp, "out", dtype)


def test_float64_falls_back_to_reference_under_auto(monkeypatch):
    picked = _selected(monkeypatch)
    q, kc, vc, lens = _kv_inputs(torch.float64)
    out = fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
    assert picked == ["reference"]
    torch.testing.assert_close(out, reference.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True),
                               rtol=1e-12, atol=1e-12)


def test_float64_under_explicit_cpu_names_the_reason():
    q, kc, vc, lens = _kv_inputs(torch.float64)
    with pytest.raises(ValueError, match=r"backend='cpu'.*float64"):
        fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, backend="cpu")
    with fastattn.backend("cpu"), pytest.raises(ValueError, match="float64"):
        fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens)


@pytest.mark.parametrize("change,reason", [
    (dict(dropout_p=0.1), "dropout"),
    (dict(bottom_right=False), "top-left"),
], ids=["dropout", "top_left"])
def test_supports_declines_what_decoding_does_not_define(change, reason):
    q, kc, vc, lens = _kv_inputs(torch.float32)
    base = dict(scale=0.2, causal=True, bottom_right=True)
    assert cpu_kvcache.supports(q, kc, vc, None, None, lens, alibi_slopes=None, args=AttentionArgs(**base)) is None
    why = cpu_kvcache.supports(q, kc, vc, None, None, lens, alibi_slopes=None, args=AttentionArgs(**{**base, **change}))
    assert why is not None and reason in why


def test_supports_declines_head_dims_the_native_kernel_does_not_take():
    """Beyond 256 the public op refuses first; the backend's own rule still says why."""
    q = torch.randn(1, 1, 2, 264)
    kc = vc = torch.randn(1, 4, 2, 264)
    why = cpu_kvcache.supports(q, kc, vc, None, None, torch.tensor([2], dtype=torch.int32), alibi_slopes=None,
                               args=AttentionArgs(scale=0.1, bottom_right=True))
    assert why is not None and "256" in why


def test_opcheck_kvcache_op_on_cpu():
    """The custom op's fake implementation and mutation declaration agree with the cpu backend."""
    q = torch.randn(2, 1, 4, 8)
    k_cache, v_cache = torch.randn(2, 8, 2, 8), torch.randn(2, 8, 2, 8)
    k_new, v_new = torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8)
    lens = torch.tensor([2, 5], dtype=torch.int32)
    args = AttentionArgs(scale=0.35, causal=True, bottom_right=True)
    torch.library.opcheck(torch.ops.fastattn.attention_kvcache.default,
                          (q, k_cache, v_cache, k_new, v_new, lens, None, *astuple(args), "cpu"))
