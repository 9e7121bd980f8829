"""Triton split-KV decoding (kernels/decode.py) through
``fastattn.flash_attn_with_kvcache(..., backend="triton")``, against
fastattn.reference.flash_attn_with_kvcache in float64.

flash-attn semantics: cache_seqlens per batch (0 included), in-place append of new k/v,
GQA/MQA, causal and windows aligned bottom-right, softcap, ALiBi, a row that sees no key
gives 0 and an LSE of +inf. Split-KV must equal the unsplit kernel; the append must write
exactly its rows (the rest of the cache is poisoned and checked bit for bit) and cache
rows past the valid length are never read. Paged caches (block_table), cache_batch_idx and
cache_leftpad are read in place (no gather), with every page, table entry and row the call must
not read poisoned. Without a GPU the kernels run on CPU tensors
under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
fp32 to 1e-5 of the output's scale; fp16/bf16 by flash-attn's error-ratio rule.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import dispatch, reference
from fastattn.kernels import decode as kernels
from fastattn.attention_args import AttentionArgs
from triton_bf16_rounding import rounded_bf16_casts

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("triton", torch.device(DEVICE)) is not None,
                                reason=f"triton backend: {dispatch.unavailable_reason('triton', torch.device(DEVICE))}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
FLOOR = 1e-5
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Fresh seed, NaN-filled new tensors (outputs and split partials), and bf16 casts that
    round as the GPU does (the interpreter truncates: see tests/triton_bf16_rounding.py)."""
    torch.manual_seed(0)
    real_empty = torch.empty

    def empty(*a, **k):
        t = real_empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)
    with rounded_bf16_casts():
        yield


def assert_matches(out, ref64, ref_lowp, what):
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(out).any(), f"{what}: NaN (unwritten output?)"
    err = (out.double() - ref64).abs().max().item()
    if out.dtype == torch.float32:
        tol = 1e-5 * max(ref64.abs().max().item(), 1.0)
    else:
        tol = 2 * (ref_lowp.double() - ref64).abs().max().item() + FLOOR
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g}"


def assert_lse(lse, lse64, lse_lowp, dtype):
    assert lse.dtype == torch.float32 and lse.shape == lse64.shape
    empty = torch.isinf(lse64) & (lse64 > 0)
    assert torch.equal(torch.isinf(lse) & (lse > 0), empty), "rows that see no key must have lse = +inf"
    f, f64, flp = lse[~empty].double(), lse64[~empty], lse_lowp[~empty].double()
    if f.numel() == 0:
        return
    err = (f - f64).abs().max().item()
    tol = (1e-5 * max(f64.abs().max().item(), 1.0) if dtype == torch.float32
           else 2 * (flp - f64).abs().max().item() + 1e-4)
    assert err <= tol, f"lse: max error {err:.3g} > {tol:.3g}"


def _poisoned_cache(batch, cache_len, heads_k, dim, lens, new, dtype, layout):
    """A cache whose rows past ``lens[b] + new`` (never to be read nor written) hold NaN.
    ``layout="heads_first"``: a (B, Hk, L, D) buffer seen as (B, L, Hk, D) by strides."""
    if layout == "heads_first":
        cache = torch.randn(batch, heads_k, cache_len, dim, device=DEVICE).to(dtype).transpose(1, 2)
    else:
        cache = torch.randn(batch, cache_len, heads_k, dim, device=DEVICE).to(dtype)
    for b, n in enumerate(lens):
        cache[b, n + new:] = float("nan")
    return cache


def _bits(t):
    return t.contiguous().view(_BITS[t.dtype])


def _reference(q, k_cache, v_cache, k_new, v_new, ct, opts):
    """The reference (float64 upcast, or ``ct`` as a low-precision run) on copies of the caches.
    Batches with no key at all (cache_seqlens 0, nothing appended) are filled in by the rule
    (output 0, LSE +inf): the reference cannot reduce over zero keys."""
    opts = dict(opts)
    lens = opts.pop("cache_seqlens")
    slopes = opts.pop("alibi_slopes")
    new = 0 if k_new is None else k_new.shape[1]
    outs, lses = [], []
    for b in range(q.shape[0]):
        n = int(lens[b])
        if n + new == 0:
            outs.append(torch.zeros(1, q.shape[1], q.shape[2], v_cache.shape[-1], dtype=ct, device=q.device))
            lses.append(torch.full((1, q.shape[2], q.shape[1]), float("inf"), dtype=torch.float64, device=q.device))
            continue
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[b : b + 1]).to(
            torch.float64 if ct == torch.float64 else torch.float32)
        kc, vc = k_cache[b : b + 1].clone().to(ct), v_cache[b : b + 1].clone().to(ct)
        o, lse = reference.flash_attn_with_kvcache(
            q[b : b + 1].to(ct), kc, vc, None if k_new is None else k_new[b : b + 1].to(ct),
            None if v_new is None else v_new[b : b + 1].to(ct), cache_seqlens=lens[b : b + 1], alibi_slopes=sl,
            upcast=ct == torch.float64, **opts)
        outs.append(o)
        lses.append(lse.double())
    return torch.cat(outs), torch.cat(lses)


def run_case(dtype, batch=2, seqlen_q=1, heads=4, heads_k=2, head_dim=64, head_dim_v=None, cache_len=300,
             lens=(100, 250), new=0, causal=True, window=(-1, -1), softcap=0.0, alibi=None, layout="contiguous"):
    head_dim_v = head_dim_v or head_dim
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE).to(dtype)
    k_cache = _poisoned_cache(batch, cache_len, heads_k, head_dim, lens, new, dtype, layout)
    v_cache = _poisoned_cache(batch, cache_len, heads_k, head_dim_v, lens, new, dtype, layout)
    k_new = v_new = None
    if new:
        k_new = torch.randn(batch, new, heads_k, head_dim, device=DEVICE).to(dtype)
        v_new = torch.randn(batch, new, heads_k, head_dim_v, device=DEVICE).to(dtype)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    slopes = None
    if alibi == "per_head":
        slopes = torch.rand(heads, device=DEVICE) * 0.3
    elif alibi == "per_batch":
        slopes = torch.rand(batch, heads, device=DEVICE) * 0.3
    opts = dict(cache_seqlens=cache_seqlens, causal=causal, window_size=window, softcap=softcap,
                alibi_slopes=slopes, return_softmax_lse=True)

    refs = [_reference(q, k_cache, v_cache, k_new, v_new, ct, opts) for ct in (torch.float64, dtype)]
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    if new:  # the in-place append the kernel must reproduce, bit for bit, and nothing else
        for b, n in enumerate(lens):
            kc_ref[b, n : n + new], vc_ref[b, n : n + new] = k_new[b], v_new[b]

    out, lse = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, backend="triton", **opts)
    assert out.dtype == dtype and out.shape == (batch, seqlen_q, heads, head_dim_v)
    assert torch.equal(_bits(k_cache), _bits(kc_ref)) and torch.equal(_bits(v_cache), _bits(vc_ref)), \
        "the append must write exactly rows cache_seqlens[b] .. + Lnew"
    (o64, l64), (olp, llp) = refs
    assert_matches(out, o64, olp, "out")
    assert_lse(lse, l64, llp.float(), dtype)
    return out, lse


HEADS = [(4, 2, 64), (6, 1, 59), (2, 2, 128), (2, 1, 1)]
HEADS_IDS = ["gqa-d64", "mqa-d59", "mha-d128", "gqa-d1"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k,head_dim", HEADS, ids=HEADS_IDS)
def test_decode_gqa_head_dims(dtype, heads, heads_k, head_dim):
    run_case(dtype, heads=heads, heads_k=heads_k, head_dim=head_dim)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("head_dim", [1, 16, 59, 64, 111, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_decode_full_grid(dtype, heads, heads_k, head_dim, causal):
    run_case(dtype, heads=heads, heads_k=heads_k, head_dim=head_dim, causal=causal, new=2, seqlen_q=2)


APPEND = [(0, 1, True), (1, 1, True), (3, 4, True), (3, 2, False)]
APPEND_IDS = ["new0-q1", "new1-q1-causal", "new3-q4-causal", "new3-q2-full"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("new,seqlen_q,causal", APPEND, ids=APPEND_IDS)
def test_decode_append_and_causal(dtype, new, seqlen_q, causal):
    """Lnew 0/1/3 with per-batch lengths 0, 1 and 117 (a cache of 128 rows, two key blocks)."""
    run_case(dtype, batch=3, heads=2, heads_k=1, seqlen_q=seqlen_q, new=new, causal=causal, lens=(0, 1, 117),
             cache_len=128, head_dim=40)


OPTIONS = {
    "window": dict(window=(32, 0)),
    "window_right": dict(window=(20, 5), causal=False, seqlen_q=3),
    "softcap": dict(softcap=5.0),
    "alibi_head": dict(alibi="per_head"),
    "alibi_batch": dict(alibi="per_batch", causal=False, seqlen_q=2),
    "dv": dict(head_dim=40, head_dim_v=72),
    "gqa_window_softcap": dict(heads=8, heads_k=2, window=(40, 0), softcap=3.0, new=2, seqlen_q=2),
    "heads_first_cache": dict(layout="heads_first", new=1, head_dim=111),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
def test_decode_options(dtype, option):
    run_case(dtype, **OPTIONS[option])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_decode_long_cache_many_splits(dtype):
    """2100 keys, one query token, one kv head: the heuristic picks several splits to fill
    the device, and their partials are merged; the other batch has a cache of 1 row."""
    batch, heads_k, cache_len = 2, 1, 2100
    block_n = kernels.decode_config(2, 64, 64, torch.tensor([], dtype=dtype).element_size())["BLOCK_N"]
    assert kernels.choose_num_splits(batch * heads_k, cache_len, block_n, kernels.DEFAULT_SM_COUNT) > 2
    run_case(dtype, batch=batch, heads=2, heads_k=heads_k, head_dim=32, cache_len=cache_len, lens=(2098, 0),
             new=1, window=(1500, 0), alibi="per_head")


def test_decode_rows_that_see_no_key():
    """More queries than keys, causal bottom-right: the first rows of batch 0 see no key."""
    out, lse = run_case(torch.float32, seqlen_q=4, lens=(2, 50), causal=True, cache_len=64)
    assert (out[0, :2] == 0).all() and torch.isinf(lse[0, :, :2]).all()
    assert torch.isfinite(lse[0, :, 2:]).all()


def test_decode_empty_cache():
    """cache_seqlens = 0 and nothing appended: no key at all, output 0, lse +inf."""
    out, lse = run_case(torch.float32, lens=(0, 5), cache_len=16, causal=False)
    assert (out[0] == 0).all() and torch.isinf(lse[0]).all() and (lse[0] > 0).all()


def _launch(q, kc, vc, lens, num_splits, **kw):
    args = AttentionArgs(scale=1 / math.sqrt(q.shape[-1]), causal=kw.pop("causal", False), bottom_right=True,
                         window_left=kw.pop("window_left", -1), softcap=kw.pop("softcap", 0.0))
    return kernels.kvcache_fwd(q, kc, vc, None, None, lens, args, num_splits=num_splits, **kw)


@pytest.mark.parametrize("splits", [2, 7, 40], ids=["s2", "s7", "s40"])
def test_split_count_does_not_change_the_result(splits):
    """Split-KV equals unsplit: any split count (including more splits than keys, where some
    splits are empty, and splits that cut key blocks) gives the output and LSE of one split."""
    q = torch.randn(2, 2, 4, 48, device=DEVICE)
    kc, vc = torch.randn(2, 90, 2, 48, device=DEVICE), torch.randn(2, 90, 2, 48, device=DEVICE)
    lens = torch.tensor([83, 0], dtype=torch.int32, device=DEVICE)
    slopes = torch.rand(2, 4, device=DEVICE) * 0.2
    kw = dict(causal=True, window_left=50, softcap=4.0, alibi_slopes=slopes)
    o1, l1 = _launch(q, kc, vc, lens, 1, **dict(kw))
    o2, l2 = _launch(q, kc, vc, lens, splits, **dict(kw))
    torch.testing.assert_close(o2, o1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(l2, l1, atol=1e-6, rtol=1e-6)
    assert torch.isfinite(l1[0]).all() and torch.isinf(l1[1]).all() and (o1[1] == 0).all()
    o64, l64 = _reference(q, kc, vc, None, None, torch.float64, dict(
        cache_seqlens=lens, causal=True, window_size=(50, 0), softcap=4.0, alibi_slopes=slopes,
        return_softmax_lse=True))
    assert_matches(o2, o64, o64, "split out")


def test_num_splits_heuristic():
    """One query token over a 32k cache fills the device: enough splits for two waves of an
    H100's 132 SMs; a batch that already fills it is not split; short caches are split less."""
    sms = 132
    splits = kernels.choose_num_splits(1 * 8, 32768, 64, sms)
    assert 8 * splits >= sms and splits <= kernels.MAX_SPLITS
    assert kernels.choose_num_splits(64 * 8, 32768, 64, sms) == 1
    assert kernels.choose_num_splits(8, 200, 64, sms) == 1
    assert kernels.choose_num_splits(8, 0, 64, sms) == 1


def test_public_op_splits(monkeypatch):
    """The public op goes through the heuristic: forcing it to 1 split or to 5 gives the same result."""
    q = torch.randn(1, 1, 2, 32, device=DEVICE)
    kc, vc = torch.randn(1, 700, 1, 32, device=DEVICE), torch.randn(1, 700, 1, 32, device=DEVICE)
    lens = torch.tensor([650], dtype=torch.int32, device=DEVICE)
    results = []
    for n in (1, 5):
        monkeypatch.setattr(kernels, "choose_num_splits", lambda *a, n=n: n)
        results.append(fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, return_softmax_lse=True,
                                                        backend="triton"))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- paged caches, read in place


def _no_gather(*args, **kwargs):
    raise AssertionError("the Triton backend must address the cache in place, not gather it")


def _paged_layout(lens, new, page, max_blocks, spare, gen):
    """A shuffled block table: sequence ``b`` holds ``lens[b] + new`` keys in that many pages,
    drawn at random from ``num_blocks`` (``spare`` of them left unused). The table entries past
    a sequence's pages point at the first spare block (poisoned with NaN by the caller), so a
    read of one would show. Returns ``(table int32 (B, max_blocks), num_blocks, nan_block)``."""
    used = [-(-(n + new) // page) for n in lens]
    num_blocks = sum(used) + spare
    order = torch.randperm(num_blocks, generator=gen)
    nan_block = int(order[-1])
    table = torch.full((len(lens), max_blocks), nan_block, dtype=torch.int32)
    at = 0
    for b, u in enumerate(used):
        table[b, :u] = order[at : at + u].to(torch.int32)
        at += u
    return table, num_blocks, nan_block


def _to_pages(cont, table, num_blocks, page):
    """The contiguous cache ``cont`` (B, capacity, Hk, D) scattered into NaN-filled pages through
    ``table``, as far as each sequence's NaN-free rows go (then the rest of its last page is NaN)."""
    pages = torch.full((num_blocks, page, *cont.shape[2:]), float("nan"), dtype=cont.dtype, device=cont.device)
    for b in range(cont.shape[0]):
        for j in range(table.shape[1]):
            rows = cont[b, j * page : (j + 1) * page]
            if rows.shape[0] and not torch.isnan(rows.float()).all():
                pages[int(table[b, j]), : rows.shape[0]] = rows
    return pages


def run_paged_case(dtype, *, page, lens, new=1, seqlen_q=1, heads=4, heads_k=2, head_dim=32, num_splits=0,
                   causal=True, window=(-1, -1), softcap=0.0, alibi=False, sink=False, spare=3, seed=0):
    """``flash_attn_with_kvcache(..., block_table=...)`` on the Triton backend against the float64
    reference on the same keys laid out contiguously; unused pages, the unused rows of each last
    page and the table entries past each sequence's pages are poisoned (NaN pages), and the call
    must not gather (the kernels read the pages in place). The append must change exactly the
    rows ``cache_seqlens[b] .. + new`` of each sequence's pages, bit for bit."""
    from fastattn.ops import kvcache as core

    gen = torch.Generator().manual_seed(seed)
    batch = len(lens)
    capacity = max(n + new for n in lens) + page  # one whole page more than the longest sequence needs
    max_blocks = -(-capacity // page)
    table, num_blocks, nan_block = _paged_layout(lens, new, page, max_blocks, spare, gen)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)

    q = rand(batch, seqlen_q, heads, head_dim)
    cont_k, cont_v = (rand(batch, max_blocks * page, heads_k, head_dim) for _ in range(2))
    for b, n in enumerate(lens):
        cont_k[b, n:], cont_v[b, n:] = float("nan"), float("nan")
    k_pages, v_pages = (_to_pages(c, table, num_blocks, page) for c in (cont_k, cont_v))
    assert torch.isnan(k_pages[nan_block].float()).all()
    k_new, v_new = (rand(batch, new, heads_k, head_dim) for _ in range(2)) if new else (None, None)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    opts = dict(cache_seqlens=cache_seqlens, causal=causal, window_size=window, softcap=softcap,
                alibi_slopes=(torch.rand(batch, heads, generator=gen) * 0.3).to(DEVICE) if alibi else None,
                learnable_sink=(torch.randn(heads, generator=gen) * 2).to(DEVICE) if sink else None)

    refs = []
    for ct in (torch.float64, dtype):
        o, lse = reference.flash_attn_with_kvcache(
            q.to(ct), cont_k.to(ct).clone(), cont_v.to(ct).clone(), None if k_new is None else k_new.to(ct),
            None if v_new is None else v_new.to(ct), return_softmax_lse=True, upcast=ct == torch.float64,
            **{**opts, "alibi_slopes": None if not alibi else opts["alibi_slopes"].to(
                torch.float64 if ct == torch.float64 else torch.float32)})
        refs.append((o, lse.double()))
    want_k, want_v = k_pages.clone(), v_pages.clone()
    for b, n in enumerate(lens):
        for t in range(new):
            blk, row = int(table[b, (n + t) // page]), (n + t) % page
            want_k[blk, row], want_v[blk, row] = k_new[b, t], v_new[b, t]

    real_gather, core.gather_visible = core.gather_visible, _no_gather
    try:
        out, lse = fastattn.flash_attn_with_kvcache(q, k_pages, v_pages, k_new, v_new, block_table=table.to(DEVICE),
                                                    num_splits=num_splits, return_softmax_lse=True,
                                                    backend="triton", **opts)
    finally:
        core.gather_visible = real_gather
    assert torch.equal(_bits(k_pages), _bits(want_k)) and torch.equal(_bits(v_pages), _bits(want_v)), \
        "the append must write exactly rows cache_seqlens[b] .. + new through the table"
    (o64, l64), (olp, llp) = refs
    assert_matches(out, o64, olp, "out")
    assert_lse(lse, l64, llp.float(), dtype)
    return out, lse


PAGES = [1, 7, 16, 48, 64, 256, 512]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"page{p}")
def test_paged_page_sizes(page):
    """Every page size the kernel reads (flash-attn's multiples of 256, the usual 16, and sizes
    that are not multiples of a key block or of 16); ragged lengths whose new keys straddle a
    page boundary, one sequence empty before the append, the last pages partly filled."""
    lens = [page - 1, 2 * page + 3, 0] if page > 1 else [5, 12, 0]
    run_paged_case(torch.float32, page=page, lens=lens, new=2, seqlen_q=2, num_splits=0, seed=page)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("num_splits", [1, 3, 0], ids=["unsplit", "s3", "heuristic"])
def test_paged_dtypes_and_splits(dtype, num_splits):
    """Split-KV over pages: split ranges that cut pages, GQA, 16 keys a page."""
    run_paged_case(dtype, page=16, lens=[37, 70, 5], new=3, seqlen_q=3, heads=6, heads_k=2, head_dim=40,
                   num_splits=num_splits, seed=num_splits + 10)


PAGED_OPTIONS = {
    "window": dict(window=(30, 0)),
    "window_right_full": dict(causal=False, window=(20, 4), seqlen_q=2),
    "softcap_alibi": dict(softcap=4.0, alibi=True),
    "sink": dict(sink=True, heads=8, heads_k=2),
    "everything": dict(window=(45, 0), softcap=3.0, alibi=True, sink=True, heads=6, heads_k=3, num_splits=4,
                       seqlen_q=2, new=2),
    "mqa_d59_no_append": dict(heads=4, heads_k=1, head_dim=59, new=0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("option", list(PAGED_OPTIONS), ids=list(PAGED_OPTIONS))
def test_paged_options(dtype, option):
    kw = dict(PAGED_OPTIONS[option])
    run_paged_case(dtype, page=32, lens=[61, 9, 130], **{"num_splits": 2, **kw}, seed=len(option))


def test_paged_leftpad_and_batch_idx_in_place():
    """cache_leftpad and cache_batch_idx are addressed by the kernel as well (no gather): keys
    before the left pad are poisoned and never read."""
    from fastattn.ops import kvcache as core

    gen = torch.Generator().manual_seed(5)
    q = torch.randn(3, 2, 4, 32, generator=gen).to(DEVICE)
    k_cache, v_cache = (torch.randn(5, 64, 2, 32, generator=gen).to(DEVICE) for _ in range(2))
    k_new, v_new = (torch.randn(3, 2, 2, 32, generator=gen).to(DEVICE) for _ in range(2))
    lens = torch.tensor([10, 40, 3], dtype=torch.int32, device=DEVICE)
    batch_idx = torch.tensor([4, 0, 2], dtype=torch.int32, device=DEVICE)
    leftpad = torch.tensor([3, 0, 5], dtype=torch.int32, device=DEVICE)
    for b in range(3):
        row = int(batch_idx[b])
        for c in (k_cache, v_cache):
            c[row, : int(leftpad[b])] = float("nan")
            c[row, int(lens[b]) + 2 :] = float("nan")
    opts = dict(cache_seqlens=lens, cache_batch_idx=batch_idx, cache_leftpad=leftpad, causal=True,
                return_softmax_lse=True)
    o64, l64 = reference.flash_attn_with_kvcache(q.double(), k_cache.double(), v_cache.double(), k_new.double(),
                                                 v_new.double(), **opts)
    real_gather, core.gather_visible = core.gather_visible, _no_gather
    try:
        out, lse = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, backend="triton", **opts)
    finally:
        core.gather_visible = real_gather
    assert_matches(out, o64, o64, "out")
    assert_lse(lse, l64.double(), l64.double(), torch.float32)
    assert torch.equal(k_cache[4, 10:12], k_new[0]) and torch.equal(v_cache[0, 40:42], v_new[1])
