"""Triton split-KV decoding (kernels/decode.py): what only this backend has. The cases every
decoding backend shares are in tests/test_decode.py; here: the split count and its heuristic
(split-KV must equal the unsplit kernel), and paged caches (block_table), cache_batch_idx and
cache_leftpad read in place (no gather), with every page, table entry and row the call must not
read poisoned. Without a GPU the kernels run on CPU tensors under the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1). Against fastattn.reference in float64 by
fastattn.testing's rule.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import reference, testing
from fastattn.kernels import decode as kernels
from fastattn.attention_args import AttentionArgs
from decode_cases import DEVICE, DTYPE_IDS, DTYPES, LONG_CACHE, bits, check, reference_kvcache

pytestmark = [pytest.mark.requires_backend("triton"), pytest.mark.usefixtures("poisoned")]


def test_long_cache_case_is_split():
    """The long-cache case of test_decode.py is one the heuristic splits (more than twice)."""
    batch, heads_k, cache_len = LONG_CACHE["batch"], LONG_CACHE["heads_k"], LONG_CACHE["cache_len"]
    for dtype in DTYPES:
        block_n = kernels.decode_config(2, 64, 64, torch.tensor([], dtype=dtype).element_size())["BLOCK_N"]
        assert kernels.choose_num_splits(batch * heads_k, cache_len, block_n, kernels.DEFAULT_SM_COUNT) > 2


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
    o64, _ = reference_kvcache(q, kc, vc, None, None, torch.float64, dict(
        cache_seqlens=lens, causal=True, window_size=(50, 0), softcap=4.0, alibi_slopes=slopes))
    testing.assert_close(o2, o64, None, "split out")


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
    o64, l64 = reference_kvcache(q, kc, vc, None, None, torch.float64, dict(cache_seqlens=lens))
    testing.assert_close(results[1][0], o64, None, "out")
    testing.assert_close(results[1][1], l64, None, "lse")


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
    assert torch.equal(bits(k_pages), bits(want_k)) and torch.equal(bits(v_pages), bits(want_v)), \
        "the append must write exactly rows cache_seqlens[b] .. + new through the table"
    check(out, lse, *refs)
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
    testing.assert_close(out, o64, None, "out")
    testing.assert_close(lse, l64, None, "lse")
    assert torch.equal(k_cache[4, 10:12], k_new[0]) and torch.equal(v_cache[0, 40:42], v_new[1])
