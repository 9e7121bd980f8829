"""CUDA C++ split-KV decoding (csrc/cuda/decode) through ``fastattn.flash_attn_with_kvcache(...,
backend="cuda")``, against fastattn.reference.flash_attn_with_kvcache in float64.

flash-attn semantics: cache_seqlens per batch, in-place append of new k/v, GQA/MQA,
causal and windows aligned bottom-right, softcap, ALiBi, a row that sees no key gives 0
and an LSE of +inf. Without a GPU the kernels run on CPU tensors in the host SIMT runtime.
fp32 to 1e-5 of the output's scale; fp16/bf16 by flash-attn's error-ratio rule.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import reference, testing
from fastattn.backends import cuda as cuda_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.requires_backend("cuda"), pytest.mark.usefixtures("poisoned")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def run_case(dtype, batch=2, seqlen_q=1, heads=4, heads_k=2, head_dim=64, head_dim_v=None, cache_len=300,
             lens=(100, 250), new=0, causal=True, window=(-1, -1), softcap=0.0, alibi=None):
    head_dim_v = head_dim_v or head_dim
    q = torch.randn(batch, seqlen_q, heads, head_dim, device=DEVICE).to(dtype)
    k_cache = torch.randn(batch, cache_len, heads_k, head_dim, device=DEVICE).to(dtype)
    v_cache = torch.randn(batch, cache_len, heads_k, head_dim_v, device=DEVICE).to(dtype)
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

    refs = []
    for ct, upcast in ((torch.float64, True), (dtype, False)):
        kc, vc = k_cache.clone(), v_cache.clone()
        o, lse = reference.flash_attn_with_kvcache(q.to(ct), kc.to(ct), vc.to(ct), None if k_new is None else k_new.to(ct),
                                                   None if v_new is None else v_new.to(ct), upcast=upcast, **opts)
        refs.append((o, lse, kc, vc))
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    if new:  # the in-place append the kernel must reproduce, bit for bit
        for b, n in enumerate(lens):
            kc_ref[b, n : n + new], vc_ref[b, n : n + new] = k_new[b], v_new[b]

    out, lse = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, backend="cuda", **opts)
    assert out.dtype == dtype and out.shape == (batch, seqlen_q, heads, head_dim_v)
    assert torch.equal(k_cache, kc_ref) and torch.equal(v_cache, vc_ref), "in-place append"
    (o64, l64, _, _), (olp, llp, _, _) = refs
    testing.assert_close(out, o64, olp, "out")
    testing.assert_close(lse, l64, llp, "lse", floor=1e-4 if dtype != torch.float32 else testing.DEFAULT_FLOOR)
    return out, lse


HEADS = [(4, 2, 64), (6, 1, 59), (4, 4, 128)]
HEADS_IDS = ["gqa-d64", "mqa-d59", "mha-d128"]


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


APPEND = [(1, 1, True), (3, 4, True), (3, 4, False)]
APPEND_IDS = ["new1-q1-causal", "new3-q4-causal", "new3-q4-full"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("new,seqlen_q,causal", APPEND, ids=APPEND_IDS)
def test_decode_append_and_causal(dtype, new, seqlen_q, causal):
    run_case(dtype, seqlen_q=seqlen_q, new=new, causal=causal, lens=(1, 117), cache_len=128)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", ["window", "window_right", "softcap", "alibi_head", "alibi_batch", "dv"],
                         ids=["window", "window_right", "softcap", "alibi_head", "alibi_batch", "dv"])
def test_decode_options(dtype, option):
    kw = {
        "window": dict(window=(32, 0)),
        "window_right": dict(window=(20, 5), causal=False, seqlen_q=3),
        "softcap": dict(softcap=5.0),
        "alibi_head": dict(alibi="per_head"),
        "alibi_batch": dict(alibi="per_batch", causal=False, seqlen_q=2),
        "dv": dict(head_dim=40, head_dim_v=72),
    }[option]
    run_case(dtype, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_decode_long_cache_many_splits(dtype):
    """2100 keys: more than one split's worth (1024), so at least three splits are merged."""
    run_case(dtype, batch=1, heads=2, heads_k=1, head_dim=32, cache_len=2100, lens=(2099,), new=1)


def test_decode_rows_that_see_no_key():
    """More queries than keys, causal bottom-right: the first rows of batch 0 see no key."""
    out, lse = run_case(torch.float32, seqlen_q=4, lens=(2, 50), causal=True, cache_len=64)
    assert (out[0, :2] == 0).all() and torch.isinf(lse[0, :, :2]).all()
    assert torch.isfinite(lse[0, :, 2:]).all()


def test_decode_empty_cache():
    """cache_seqlens = 0 and nothing appended: no key at all, output 0, lse +inf."""
    q = torch.randn(2, 1, 2, 32, device=DEVICE)
    kc, vc = torch.randn(2, 16, 2, 32, device=DEVICE), torch.randn(2, 16, 2, 32, device=DEVICE)
    lens = torch.tensor([0, 5], dtype=torch.int32, device=DEVICE)
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, return_softmax_lse=True,
                                                backend="cuda")
    assert (out[0] == 0).all() and torch.isinf(lse[0]).all() and (lse[0] > 0).all()
    ref = reference.flash_attn_with_kvcache(q[1:].double(), kc[1:].double(), vc[1:].double(),
                                            cache_seqlens=lens[1:])
    torch.testing.assert_close(out[1:].double(), ref, atol=1e-5, rtol=1e-5)


class _Splits:
    """The simulated module with split_kv_num_splits forced to a given value."""

    def __init__(self, mod, splits):
        self._mod, self._splits = mod, splits

    def split_kv_num_splits(self, *args):
        return self._splits

    def __getattr__(self, name):
        return getattr(self._mod, name)


@pytest.mark.parametrize("splits", [1, 2, 7, 64], ids=["s1", "s2", "s7", "s64"])
def test_split_count_does_not_change_the_result(monkeypatch, splits):
    """Split-KV equals unsplit: any split count (including more splits than keys, where
    some splits are empty) gives the same output and LSE up to float rounding."""
    name = "_cuda" if DEVICE == "cuda" else "_cuda_sim"
    base = cuda_backend._MODULES[name]
    q = torch.randn(1, 1, 2, 48, device=DEVICE)
    kc, vc = torch.randn(1, 40, 2, 48, device=DEVICE), torch.randn(1, 40, 2, 48, device=DEVICE)
    lens = torch.tensor([33], dtype=torch.int32, device=DEVICE)
    monkeypatch.setitem(cuda_backend._MODULES, name, _Splits(base, 1))
    o1, l1 = fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, return_softmax_lse=True, backend="cuda")
    monkeypatch.setitem(cuda_backend._MODULES, name, _Splits(base, splits))
    o2, l2 = fastattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, return_softmax_lse=True, backend="cuda")
    torch.testing.assert_close(o2, o1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(l2, l1, atol=1e-6, rtol=1e-6)
    assert math.isfinite(l1.max().item())
