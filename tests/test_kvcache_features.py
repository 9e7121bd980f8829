"""The rest of flash-attn 2.x's ``flash_attn_with_kvcache`` signature: paged caches
(``block_table``), rotary embedding (``rotary_cos/sin``, ``rotary_interleaved``),
``cache_batch_idx``, ``cache_leftpad`` and ``num_splits``, on every backend that decodes here
(the Triton kernels under the interpreter, the native CPU kernels, the reference), against
``fastattn.reference.flash_attn_with_kvcache`` in float64 (a per-sequence loop over flash-attn's
documented semantics) and, for paged caches, against the same cache laid out contiguously."""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference, testing
from decode_cases import check

BACKENDS = ["reference", "cpu", "triton"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _oracle(q, k_cache, v_cache, k, v, dtype, **opts):
    """(float64, input-dtype) reference results, on copies of the caches (the reference appends too)."""
    results = []
    for ct in (torch.float64, dtype):
        cast = (lambda t: None if t is None else t.to(ct)) if ct != torch.float32 or dtype != torch.float32 else \
            (lambda t: t)
        rot = {key: opts[key].to(ct) if opts.get(key) is not None else None for key in ("rotary_cos", "rotary_sin")}
        results.append(reference.flash_attn_with_kvcache(
            cast(q), cast(k_cache).clone(), cast(v_cache).clone(), cast(k), cast(v),
            **{**opts, **rot}, return_softmax_lse=True, upcast=ct == torch.float64))
    return results


def _check(out, lse, oracle, dtype):
    check(out, lse, *oracle)


def _paged_copy(cache, lens_plus_new, page, num_blocks, seed):
    """The contiguous ``cache`` (B, L, Hk, D) scattered into ``num_blocks`` pages in a random order,
    with the block table mapping it back; unused blocks hold NaN (never to be read)."""
    batch, length = cache.shape[:2]
    per_seq = -(-length // page)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))[: batch * per_seq]
    table = order.view(batch, per_seq).to(torch.int32)
    pages = torch.full((num_blocks, page, *cache.shape[2:]), float("nan"), dtype=cache.dtype)
    padded = torch.cat([cache, cache.new_full((batch, per_seq * page - length, *cache.shape[2:]), float("nan"))], 1)
    for b in range(batch):
        for j in range(per_seq):
            pages[table[b, j]] = padded[b, j * page:(j + 1) * page]
    return pages, table


def _unpage(pages, table, length):
    return torch.stack([torch.cat([pages[int(i)] for i in row])[:length] for row in table])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("page", [1, 7, 16, 48, 256], ids=lambda p: f"page{p}")
def test_paged_cache_equals_contiguous(backend, dtype, page):
    dtype = DTYPES[dtype]
    batch, heads, heads_k, d, new = 3, 4, 2, 40, 3
    length = 2 * page + 5
    lens = torch.tensor([page - 1, 2 * page - 2, 0], dtype=torch.int32)  # appends cross page boundaries
    q = _randn(batch, 1, heads, d, seed=1, dtype=dtype)
    k_cont, v_cont = (_randn(batch, length, heads_k, d, seed=s, dtype=dtype) for s in (2, 3))
    k_new, v_new = (_randn(batch, new, heads_k, d, seed=s, dtype=dtype) for s in (4, 5))
    num_blocks = 3 * -(-length // page) + 2
    k_pages, table = _paged_copy(k_cont, lens + new, page, num_blocks, seed=6)
    v_pages, _ = _paged_copy(v_cont, lens + new, page, num_blocks, seed=6)
    opts = dict(cache_seqlens=lens, causal=True)
    oracle = _oracle(q, k_cont, v_cont, k_new, v_new, dtype, **opts)

    out, lse = fastattn.flash_attn_with_kvcache(q, k_pages, v_pages, k_new, v_new, block_table=table,
                                                return_softmax_lse=True, backend=backend, **opts)
    cont_k, cont_v = k_cont.clone(), v_cont.clone()
    fastattn.flash_attn_with_kvcache(q, cont_k, cont_v, k_new, v_new, backend=backend, **opts)  # the same append
    k_cont, v_cont = cont_k, cont_v
    _check(out, lse, oracle, dtype)
    # Bit for bit the contiguous call: the same keys in the same order. One split on both sides,
    # since the split heuristic sees the paged capacity (whole pages), not the contiguous length.
    paged = fastattn.flash_attn_with_kvcache(q, k_pages.clone(), v_pages.clone(), block_table=table, num_splits=1,
                                             return_softmax_lse=True, backend=backend, cache_seqlens=lens + new,
                                             causal=True)
    cont = fastattn.flash_attn_with_kvcache(q, k_cont.clone(), v_cont.clone(), num_splits=1, return_softmax_lse=True,
                                            backend=backend, cache_seqlens=lens + new, causal=True)
    assert torch.equal(paged[0], cont[0]) and torch.equal(paged[1], cont[1])
    # The append went through the table: the pages now hold what the contiguous cache holds.
    for pages, cont in ((k_pages, k_cont), (v_pages, v_cont)):
        for b in range(batch):
            n = int(lens[b]) + new
            assert torch.equal(_unpage(pages, table, length)[b, :n], cont[b, :n])


@pytest.mark.parametrize("backend", BACKENDS)
def test_paged_cache_gqa_window_softcap_alibi(backend):
    batch, heads, heads_k, d, page, new = 2, 6, 2, 64, 32, 2
    length = 100
    lens = torch.tensor([31, 77], dtype=torch.int32)
    q = _randn(batch, 2, heads, d, seed=11)
    k_cont, v_cont = (_randn(batch, length, heads_k, d, seed=s) for s in (12, 13))
    k_new, v_new = (_randn(batch, new, heads_k, d, seed=s) for s in (14, 15))
    k_pages, table = _paged_copy(k_cont, lens + new, page, 9, seed=16)
    v_pages, _ = _paged_copy(v_cont, lens + new, page, 9, seed=16)
    opts = dict(cache_seqlens=lens, causal=True, window_size=(20, 0), softcap=2.0,
                alibi_slopes=torch.rand(heads, generator=torch.Generator().manual_seed(17)) * 0.3)
    oracle = _oracle(q, k_cont, v_cont, k_new, v_new, torch.float32, **opts)
    out, lse = fastattn.flash_attn_with_kvcache(q, k_pages, v_pages, k_new, v_new, block_table=table,
                                                return_softmax_lse=True, backend=backend, **opts)
    _check(out, lse, oracle, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_paged_unused_table_entries_may_hold_anything(backend):
    """As flash-attn, only the table entries of pages in use are read: entries past them (-1, a
    block out of range) are neither checked nor read, on the gathering backends too."""
    q = _randn(3, 1, 2, 16, seed=71)
    pages_k, pages_v = (_randn(4, 16, 1, 16, seed=s) for s in (72, 73))
    # With one new key each: 16, 21 and 1 keys, in pages [2], [0, 3] and [1].
    table = torch.tensor([[2, -1, 99], [0, 3, -5], [1, -1, -1]], dtype=torch.int32)
    lens = torch.tensor([15, 20, 0], dtype=torch.int32)
    k_new, v_new = (_randn(3, 1, 1, 16, seed=s) for s in (74, 75))
    kp, vp = pages_k.clone(), pages_v.clone()
    out, lse = fastattn.flash_attn_with_kvcache(q, kp, vp, k_new, v_new, cache_seqlens=lens, block_table=table,
                                                return_softmax_lse=True, backend=backend)
    cont_k = torch.stack([torch.cat([pages_k[2], pages_k[2]]), torch.cat([pages_k[0], pages_k[3]]),
                          torch.cat([pages_k[1], pages_k[1]])])
    cont_v = torch.stack([torch.cat([pages_v[2], pages_v[2]]), torch.cat([pages_v[0], pages_v[3]]),
                          torch.cat([pages_v[1], pages_v[1]])])
    _check(out, lse, _oracle(q, cont_k, cont_v, k_new, v_new, torch.float32, cache_seqlens=lens), torch.float32)
    assert torch.equal(kp[2, 15], k_new[0, 0]) and torch.equal(kp[3, 4], k_new[1, 0])
    assert torch.equal(vp[1, 0], v_new[2, 0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["paged", "batch_idx_leftpad", "contiguous"])
def test_index_values_are_checked_once(monkeypatch, backend, layout):
    """cache_seqlens (and the other index tensors) are checked once per call, by the core op,
    whether the backend reads the cache in place or is given a gathered copy."""
    from fastattn import validation

    seen = []
    real = validation.cache_seqlens_values
    monkeypatch.setattr(validation, "cache_seqlens_values", lambda *a: (seen.append(a), real(*a)))
    base = _base()
    if layout == "batch_idx_leftpad":
        base.pop("block_table")
        base.update(cache_batch_idx=torch.tensor([5, 1], dtype=torch.int32),
                    cache_seqlens=torch.tensor([3, 12], dtype=torch.int32),
                    cache_leftpad=torch.tensor([1, 0], dtype=torch.int32))
    elif layout == "contiguous":
        base.pop("block_table")
        base.update(k_cache=base["k_cache"][:2], v_cache=base["v_cache"][:2],
                    cache_seqlens=torch.tensor([3, 12], dtype=torch.int32))
    fastattn.flash_attn_with_kvcache(**base, backend=backend)
    assert len(seen) == 1


def _rotary_tables(max_pos, rotary_dim, seed, dtype):
    angle = torch.rand(max_pos, rotary_dim // 2, generator=torch.Generator().manual_seed(seed)) * 6.28
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "neox"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_rotary(backend, dtype, interleaved, causal):
    dtype = DTYPES[dtype]
    batch, seqlen_q, heads, heads_k, d, rotary_dim, new = 2, 3, 4, 2, 48, 32, 3
    q = _randn(batch, seqlen_q, heads, d, seed=21, dtype=dtype)
    k_cache, v_cache = (_randn(batch, 40, heads_k, d, seed=s, dtype=dtype) for s in (22, 23))
    k_new, v_new = (_randn(batch, new, heads_k, d, seed=s, dtype=dtype) for s in (24, 25))
    cos, sin = _rotary_tables(64, rotary_dim, seed=26, dtype=dtype)
    lens = torch.tensor([5, 30], dtype=torch.int32)
    opts = dict(cache_seqlens=lens, causal=causal, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved)
    oracle = _oracle(q, k_cache, v_cache, k_new, v_new, dtype, **opts)
    kc = k_cache.clone()
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, v_cache.clone(), k_new, v_new, return_softmax_lse=True,
                                                backend=backend, **opts)
    _check(out, lse, oracle, dtype)
    # The cache holds the rotated keys, at their positions.
    pos = lens.long()[:, None] + torch.arange(new)[None, :]
    want = reference.apply_rotary(k_new.double(), cos.double(), sin.double(), pos[:, :, None], interleaved)
    got = torch.stack([kc[b, int(lens[b]):int(lens[b]) + new] for b in range(batch)]).double()
    tol = 1e-6 if dtype == torch.float32 else 2 * (want.to(dtype).double() - want).abs().max().item() + 1e-2
    assert (got - want).abs().max().item() <= tol
    assert not torch.equal(got, k_new.double())  # the rotation did something


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_batch_idx_and_leftpad(backend):
    batch, heads, heads_k, d, new = 3, 4, 1, 32, 2
    q = _randn(batch, 1, heads, d, seed=31)
    k_cache, v_cache = (_randn(5, 50, heads_k, d, seed=s) for s in (32, 33))  # more cache rows than sequences
    k_new, v_new = (_randn(batch, new, heads_k, d, seed=s) for s in (34, 35))
    opts = dict(cache_seqlens=torch.tensor([10, 40, 3], dtype=torch.int32),
                cache_batch_idx=torch.tensor([4, 0, 2], dtype=torch.int32),
                cache_leftpad=torch.tensor([3, 0, 5], dtype=torch.int32),  # the last: only its new keys visible
                causal=True)
    oracle = _oracle(q, k_cache, v_cache, k_new, v_new, torch.float32, **opts)
    kc, vc = k_cache.clone(), v_cache.clone()
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, return_softmax_lse=True, backend=backend,
                                                **opts)
    _check(out, lse, oracle, torch.float32)
    untouched = [1, 3]
    assert torch.equal(kc[untouched], k_cache[untouched]) and torch.equal(vc[untouched], v_cache[untouched])
    assert torch.equal(kc[4, 10:12], k_new[0]) and torch.equal(vc[0, 40:42], v_new[1])


@pytest.mark.parametrize("num_splits", [1, 3, 7])
def test_num_splits_changes_nothing(num_splits):
    q = _randn(2, 1, 4, 64, seed=41)
    k_cache, v_cache = (_randn(2, 300, 2, 64, seed=s) for s in (42, 43))
    opts = dict(cache_seqlens=torch.tensor([299, 120], dtype=torch.int32), causal=True, return_softmax_lse=True)
    auto = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, backend="triton", **opts)
    split = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, num_splits=num_splits, backend="triton", **opts)
    oracle = _oracle(q, k_cache, v_cache, None, None, torch.float32, **{k: v for k, v in opts.items()
                                                                       if k != "return_softmax_lse"})
    _check(*split, oracle, torch.float32)
    torch.testing.assert_close(split[0], auto[0], rtol=1e-5, atol=1e-6)


def _base():
    return dict(q=_randn(2, 1, 4, 32, seed=51), k_cache=_randn(6, 16, 2, 32, seed=52),
                v_cache=_randn(6, 16, 2, 32, seed=53), cache_seqlens=torch.tensor([3, 20], dtype=torch.int32),
                block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32))


@pytest.mark.parametrize("change, error, match", [
    (dict(cache_batch_idx=torch.tensor([0, 1], dtype=torch.int32)), ValueError, "cache_batch_idx cannot be combined"),
    (dict(k_cache=_randn(6, 0, 2, 32, seed=1), v_cache=_randn(6, 0, 2, 32, seed=2)), ValueError, "page_block_size"),
    (dict(block_table=torch.tensor([[0, 1], [2, 9]], dtype=torch.int32)), ValueError, "block_table entries"),
    (dict(block_table=torch.tensor([[0.0, 1.0], [2.0, 3.0]])), TypeError, "block_table"),
    (dict(block_table=torch.tensor([[0, 1]], dtype=torch.int32)), ValueError, "block_table must have a batch size"),
    (dict(block_table=torch.tensor([[0, 1], [2, 2 ** 32 + 3]])), ValueError, "block_table entries"),
    (dict(cache_seqlens=torch.tensor([3, 40], dtype=torch.int32)), ValueError, "cache_seqlens"),
    (dict(rotary_cos=torch.ones(40, 8), rotary_sin=torch.ones(40, 8)), ValueError, "give k and v too"),
    (dict(rotary_cos=torch.ones(40, 8)), ValueError, "rotary_cos and rotary_sin must be given together"),
    (dict(num_splits=-1), ValueError, "num_splits"),
    (dict(cache_leftpad=torch.tensor([5, 0], dtype=torch.int32)), ValueError, "cache_leftpad"),
], ids=["batch_idx+paged", "page_size", "table_range", "table_dtype", "table_batch", "table_int64_wraps", "lens_range",
        "rotary_no_k", "rotary_half", "num_splits", "leftpad_range"])
def test_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        fastattn.flash_attn_with_kvcache(**{**_base(), **change})


def test_compiled_paged_decode_matches_eager():
    q = _randn(2, 1, 4, 32, seed=61)
    k_cont, v_cont = (_randn(2, 40, 2, 32, seed=s) for s in (62, 63))
    lens = torch.tensor([7, 33], dtype=torch.int32)
    k_new, v_new = (_randn(2, 1, 2, 32, seed=s) for s in (64, 65))
    cos, sin = _rotary_tables(64, 16, seed=66, dtype=torch.float32)
    k_pages, table = _paged_copy(k_cont, lens + 1, 16, 8, seed=67)
    v_pages, _ = _paged_copy(v_cont, lens + 1, 16, 8, seed=67)

    def step(q, kp, vp, kn, vn, lens, table):
        return fastattn.flash_attn_with_kvcache(q, kp, vp, kn, vn, rotary_cos=cos, rotary_sin=sin, cache_seqlens=lens,
                                                block_table=table, causal=True)

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True)(q, k_pages.clone(), v_pages.clone(), k_new, v_new, lens, table)
    eager = step(q, k_pages.clone(), v_pages.clone(), k_new, v_new, lens, table)
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)
    oracle = _oracle(q, k_cont, v_cont, k_new, v_new, torch.float32, cache_seqlens=lens, causal=True,
                     rotary_cos=cos, rotary_sin=sin)
    testing.assert_close(got, oracle[0][0], oracle[1][0], "out")
