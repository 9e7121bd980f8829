"""Shared pieces of the KV-cache decoding tests (tests/test_decode.py over the split-KV GPU
backends, tests/test_cpu_kvcache.py, and the backend-specific files): one case runner against ``fastattn.reference.flash_attn_with_kvcache``
in float64, by :mod:`fastattn.testing`'s rule.

The caches are poisoned: rows past ``cache_seqlens[b] + Lnew`` (never to be read nor written)
hold NaN, and the in-place append must change exactly rows ``cache_seqlens[b] .. + Lnew``, bit
for bit. A batch with no key at all (length 0, nothing appended) gets the rule's answer
(output 0, LSE +inf), since the reference cannot reduce over zero keys.
"""
from __future__ import annotations

import torch

import fastattn
from fastattn import reference, testing
from backend_cases import device_of

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
"""Where the GPU backends' cases run (the ``cpu`` backend's always run on the CPU)."""
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
LONG_CACHE = dict(batch=2, heads=2, heads_k=1, head_dim=32, cache_len=2100, lens=(2098, 0), new=1,
                  window=(1500, 0), alibi="per_head")
"""2100 keys, one query token, one kv head: several splits' worth (test_triton_decode.py checks that
Triton's heuristic splits it more than twice); the other batch has a cache of 1 row."""
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def poisoned_cache(batch, cache_len, heads_k, dim, lens, new, dtype, layout="contiguous", device=DEVICE):
    """A ``(B, cache_len, Hk, dim)`` cache whose rows past ``lens[b] + new`` hold NaN.
    ``layout="heads_first"``: a (B, Hk, L, D) buffer seen as (B, L, Hk, D) by strides."""
    if layout == "heads_first":
        cache = torch.randn(batch, heads_k, cache_len, dim, device=device).to(dtype).transpose(1, 2)
    else:
        cache = torch.randn(batch, cache_len, heads_k, dim, device=device).to(dtype)
    for b, n in enumerate(lens):
        cache[b, n + new:] = float("nan")
    return cache


def bits(t):
    """``t``'s raw bits (NaN payloads compare equal, as they must in an untouched cache row)."""
    return t.contiguous().view(_BITS[t.dtype])


def reference_kvcache(q, k_cache, v_cache, k_new, v_new, ct, opts):
    """``(out, lse float64)`` of the reference (float64 upcast, or ``ct`` as a low-precision run)
    on copies of the caches, batch by batch; a batch with no key at all by the rule."""
    opts = dict(opts)
    opts.pop("return_softmax_lse", None)
    lens = opts.pop("cache_seqlens")
    slopes = opts.pop("alibi_slopes", None)
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
            upcast=ct == torch.float64, return_softmax_lse=True, **opts)
        outs.append(o)
        lses.append(lse.double())
    return torch.cat(outs), torch.cat(lses)


def check(out, lse, ref64, ref_lowp=None):
    """``out`` and ``lse`` against the references' ``(out, lse)`` by the project's rule (rows that
    see no key: output 0, LSE +inf, where the oracle has them); ``ref_lowp`` None: fp32 inputs,
    held to the rule's relative floor."""
    testing.assert_close(out, ref64[0], None if ref_lowp is None else ref_lowp[0], "out")
    assert lse.dtype == torch.float32
    testing.assert_close(lse, ref64[1], None if ref_lowp is None else ref_lowp[1].float(), "lse")


def run_case(backend, dtype, batch=2, seqlen_q=1, heads=4, heads_k=2, head_dim=64, head_dim_v=None, cache_len=300,
             lens=(100, 250), new=0, causal=True, window=(-1, -1), softcap=0.0, alibi=None, layout="contiguous",
             strided_q=False):
    """``fastattn.flash_attn_with_kvcache(..., backend=backend)`` on fresh inputs and poisoned
    caches, checked against the reference (output, LSE, and the append bit for bit); returns
    ``(out, lse)``. ``alibi``: None, ``"per_head"`` or ``"per_batch"`` slopes; ``strided_q``: q
    a (B, Hq, Lq, D) buffer seen as (B, Lq, Hq, D) by strides."""
    head_dim_v = head_dim_v or head_dim
    device = device_of(backend)
    if strided_q:
        q = torch.randn(batch, heads, seqlen_q, head_dim, device=device).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(batch, seqlen_q, heads, head_dim, device=device).to(dtype)
    k_cache = poisoned_cache(batch, cache_len, heads_k, head_dim, lens, new, dtype, layout, device)
    v_cache = poisoned_cache(batch, cache_len, heads_k, head_dim_v, lens, new, dtype, layout, device)
    k_new = v_new = None
    if new:
        k_new = torch.randn(batch, new, heads_k, head_dim, device=device).to(dtype)
        v_new = torch.randn(batch, new, heads_k, head_dim_v, device=device).to(dtype)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    slopes = None
    if alibi == "per_head":
        slopes = torch.rand(heads, device=device) * 0.3
    elif alibi == "per_batch":
        slopes = torch.rand(batch, heads, device=device) * 0.3
    elif alibi is not None:
        raise ValueError(f"alibi must be None, 'per_head' or 'per_batch', got {alibi!r}")
    opts = dict(cache_seqlens=cache_seqlens, causal=causal, window_size=window, softcap=softcap,
                alibi_slopes=slopes, return_softmax_lse=True)

    refs = [reference_kvcache(q, k_cache, v_cache, k_new, v_new, ct, opts) for ct in (torch.float64, dtype)]
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    if new:  # the in-place append the kernel must reproduce, bit for bit, and nothing else
        for b, n in enumerate(lens):
            kc_ref[b, n : n + new], vc_ref[b, n : n + new] = k_new[b], v_new[b]

    out, lse = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, backend=backend, **opts)
    assert out.dtype == dtype and out.shape == (batch, seqlen_q, heads, head_dim_v)
    assert lse.shape == (batch, heads, seqlen_q)
    assert torch.equal(bits(k_cache), bits(kc_ref)) and torch.equal(bits(v_cache), bits(vc_ref)), \
        "the append must write exactly rows cache_seqlens[b] .. + Lnew"
    check(out, lse, *refs)
    return out, lse
