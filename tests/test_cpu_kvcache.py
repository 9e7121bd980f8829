"""KV-cache decoding on the native CPU attention (fastattn/backends/cpu/kvcache.py, backend
"cpu"): what only this backend has. The cases every decoding backend shares (head shapes, the
append, windows, softcap, ALiBi, rows that see no key) are in tests/test_decode.py, which runs
them on "cpu" too; both check by tests/decode_cases.py's runner against
fastattn.reference.flash_attn_with_kvcache in float64 (poisoned caches and outputs, the append
bit for bit).

Here: the native kernel's widest head dim and the layouts and options only it takes (strided
q, long queries on the forward kernel); every ISA; up to 8 query rows on the decoding kernel
(one call for the whole ragged batch, caches read in place, long caches split across threads
and merged by their LSE: checked with 1 and 2 threads, every ISA, every dtype); longer queries
on the forward kernel, where calls split to bound the native pack buffer (by batch element,
then by kv head group) and windows that skip the cache's head give the same answers. Also:
``auto`` picks this backend for CPU tensors and falls back to the reference for what it
declines, which ``backend="cpu"`` names in a ValueError.
"""
from __future__ import annotations

import functools
from dataclasses import astuple

import pytest
import torch

import fastattn
from fastattn import dispatch, reference, testing
from fastattn.attention_args import AttentionArgs
from decode_cases import DTYPE_IDS, DTYPES, check, reference_kvcache, run_case

cpu = pytest.importorskip("fastattn.backends.cpu.attention", reason="fastattn._C (native CPU kernels) not built")
from fastattn.backends.cpu import kvcache as cpu_kvcache  # noqa: E402  (needs the native kernels above)

_ORDER = ["avx2", "avx512", "avx512bf16"]
BEST_ISA = cpu.isa()
ISAS = _ORDER[: _ORDER.index(BEST_ISA) + 1] if BEST_ISA in _ORDER else []
if not ISAS:
    pytest.skip("this CPU has neither AVX2+FMA nor AVX-512", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("poisoned")
run_cpu = functools.partial(run_case, "cpu")


# ------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_decode_head_dim_256(dtype):
    """The widest head dim the native kernel takes (its vector loops at their longest)."""
    run_cpu(dtype, heads=4, heads_k=2, head_dim=256, new=1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("head_dim", [1, 16, 59, 64, 111, 128, 256], ids=lambda d: f"d{d}")
def test_decode_grid_window_alibi_ragged(dtype, heads, heads_k, head_dim):
    """test_decode.py's grid with a window, per-sequence ALiBi and an empty cache between two
    ragged ones."""
    run_cpu(dtype, batch=3, heads=heads, heads_k=heads_k, head_dim=head_dim, new=2, seqlen_q=3,
            lens=(113, 0, 257), cache_len=300, window=(64, -1), alibi="per_batch")


OPTIONS = {
    "window_alibi_append": dict(window=(30, 0), alibi="per_batch", seqlen_q=3, new=2),
    "strided_q_heads_first": dict(layout="heads_first", strided_q=True, seqlen_q=2, new=2, alibi="per_head"),
    "long_q": dict(seqlen_q=70, new=70, lens=(30, 200), causal=True, head_dim=32),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
def test_decode_options(dtype, option):
    run_cpu(dtype, **OPTIONS[option])


@pytest.mark.parametrize("isa", ISAS, ids=ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads,heads_k,head_dim,head_dim_v",
                         [(8, 2, 72, 72), (8, 4, 68, 124), (8, 8, 72, 136), (8, 8, 68, 124)],
                         ids=["gqa-d72", "gqa2-d68-dv124", "mha-d72-dv136", "mha-d68-dv124"])
def test_decode_every_isa(use_isa, isa, dtype, heads, heads_k, head_dim, head_dim_v):
    """Each instruction set this CPU has (AVX2, AVX-512, AVX-512+BF16 dot products): GQA groups
    of 4 and 2 rows (the 2-row register blocks are wider) and one query row per kv head (the
    wide P V blocks; cache rows of 8 heads, wide enough for the key-range split at 1300 keys),
    with vector tails in the head dims: 136 ends in a one-vector block after full 8-vector blocks (AVX2: 8 + 8 + 1), 124
    ends in a part-filled vector inside an 8-vector block on both widths, 68 in the scores."""
    use_isa(isa)
    run_cpu(dtype, batch=3, heads=heads, heads_k=heads_k, head_dim=head_dim, head_dim_v=head_dim_v,
            lens=(5, 130, 1300), cache_len=1400, new=1, softcap=4.0, alibi="per_batch")


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
    ref64 = reference_kvcache(q, kc, vc, k_new, v_new, torch.float64, opts)
    kp, vp = kc.clone(), vc.clone()
    for b, n in enumerate(lens):
        first = n + new - q.shape[1] - window[0]  # the first key row 0 of the queries sees
        kp[b, :first], vp[b, :first] = float("nan"), float("nan")
        kp[b, n + new:], vp[b, n + new:] = float("nan"), float("nan")
    out, lse = fastattn.flash_attn_with_kvcache(q, kp, vp, k_new, v_new, backend="cpu", **opts)
    check(out, lse, ref64)


def _spy_native(monkeypatch, record=lambda kernel, spec: kernel):
    """The list of ``record(kernel, spec)`` for each call of a native kernel (``kernel``:
    "forward" or "decode") through the backend's ``_C``, in order."""
    calls = []
    real = cpu._C

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def cpu_attention_fwd(self, spec):
            calls.append(record("forward", spec))
            return real.cpu_attention_fwd(spec)

        def cpu_decode_fwd(self, spec):
            calls.append(record("decode", spec))
            return real.cpu_decode_fwd(spec)

    monkeypatch.setattr(cpu, "_C", Spy())
    return calls


def test_equal_lengths_share_one_native_call(monkeypatch):
    """Consecutive batch elements with the same key count are one native call; empty ones none;
    the result equals the reference either way."""
    calls = _spy_native(monkeypatch, lambda kernel, spec: (kernel, spec["batch"], spec["seqlen_k"]))
    monkeypatch.setattr(cpu_kvcache, "DECODE_MAX_QUERY_ROWS", 0)  # the forward kernel's path
    run_cpu(torch.float32, batch=7, lens=(50, 50, 50, 7, 0, 0, 50), cache_len=64, heads=4, heads_k=1,
            head_dim=32, seqlen_q=2)
    assert calls == [("forward", 3, 50), ("forward", 1, 7), ("forward", 1, 50)]


@pytest.mark.parametrize("budget_heads,expected", [
    (8, [(2, 4, 8), (1, 4, 8)]),  # two whole batch elements fit in one call
    (2, [(1, 2, 4)] * 6),  # one batch element is over: groups of 2 kv heads (4 query heads)
    (0, [(1, 1, 2)] * 12),  # below one kv head: one kv head a call, never none
], ids=["batches", "kv_head_groups", "single_kv_heads"])
def test_large_calls_are_split_within_the_pack_budget(monkeypatch, budget_heads, expected):
    """Each native call packs at most PACK_BUDGET_BYTES of keys/values: whole batch elements
    when they fit, else groups of kv heads (with their GQA query heads, ALiBi slopes, output
    and LSE slices); the result still equals the reference."""
    calls = _spy_native(monkeypatch, lambda kernel, spec: (kernel, spec["batch"], spec["heads_k"], spec["heads_q"]))
    # One (batch element, kv head) packs 128 keys x (32 + 48) dims x 4 bytes.
    monkeypatch.setattr(cpu_kvcache, "PACK_BUDGET_BYTES", budget_heads * 128 * 80 * 4)
    monkeypatch.setattr(cpu_kvcache, "DECODE_MAX_QUERY_ROWS", 0)  # the forward kernel's path
    run_cpu(torch.float32, batch=3, heads=8, heads_k=4, head_dim=32, head_dim_v=48, lens=(90, 90, 90),
            cache_len=100, new=2, seqlen_q=2, window=(50, 0), alibi="per_batch")
    assert calls == [("forward", *call) for call in expected]


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
    check(out, lse, reference_kvcache(q, kc, vc, None, None, torch.float64, dict(
        cache_seqlens=lens, softmax_scale=0.2, causal=True, softcap=6.0, alibi_slopes=slopes)))


# ------------------------------------------------------------------------------ decoding kernel


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
    run_cpu(dtype, **opts)


@pytest.mark.parametrize("heads,heads_k,head_dim,head_dim_v", [(32, 8, 128, 128), (4, 1, 64, 40), (3, 3, 17, 256)],
                         ids=["gqa4-d128", "mqa-d64-dv40", "mha-d17-dv256"])
def test_decoding_kernel_head_shapes(heads, heads_k, head_dim, head_dim_v, threads):
    run_cpu(torch.float32, batch=2, heads=heads, heads_k=heads_k, head_dim=head_dim, head_dim_v=head_dim_v,
            lens=(1500, 700), cache_len=1600, new=1, seqlen_q=1)


@pytest.mark.parametrize("seqlen_q,expected", [(1, ["decode"]), (8, ["decode"]), (9, ["forward"] * 2)],
                         ids=["q1", "q8", "q9"])
def test_few_query_rows_take_the_decoding_kernel(monkeypatch, seqlen_q, expected):
    """Up to DECODE_MAX_QUERY_ROWS query rows: one decoding call for the whole ragged batch,
    reading the caches in place; more rows: the forward kernel, one call per length run."""
    calls = _spy_native(monkeypatch)
    run_cpu(torch.float32, batch=2, lens=(40, 90), cache_len=100, seqlen_q=seqlen_q, new=0)
    assert calls == expected


def test_decoding_kernel_never_reads_past_the_keys_or_left_of_the_window():
    """NaN in every cache row a query cannot see (left of the window, past the keys) leaves
    the decoding kernel's result equal to the reference on clean caches."""
    lens, window = (1800, 300), (600, 0)
    q = torch.randn(2, 1, 4, 64)
    kc, vc = torch.randn(2, 2000, 2, 64), torch.randn(2, 2000, 2, 64)
    opts = dict(cache_seqlens=torch.tensor(lens, dtype=torch.int32), causal=True, window_size=window,
                return_softmax_lse=True)
    ref64 = reference_kvcache(q, kc, vc, None, None, torch.float64, opts)
    for b, n in enumerate(lens):
        kc[b, : max(0, n - 1 - window[0])] = float("nan")
        vc[b, : max(0, n - 1 - window[0])] = float("nan")
        kc[b, n:], vc[b, n:] = float("nan"), float("nan")
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, backend="cpu", **opts)
    check(out, lse, ref64)


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
    testing.assert_close(out, ref, lowp, "out")


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
