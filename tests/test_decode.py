"""KV-cache decoding, ``fastattn.flash_attn_with_kvcache(..., backend=...)``, on every backend
with a split-KV decoding kernel (Triton: kernels/decode.py; CUDA C++: csrc/cuda/decode; the
native CPU kernels: csrc/cpu/decode_impl.h), against fastattn.reference.flash_attn_with_kvcache
in float64 (tests/decode_cases.py).

flash-attn semantics: cache_seqlens per batch (0 included), in-place append of new k/v (exactly
its rows: the rest of the cache is poisoned and checked bit for bit), GQA/MQA, causal and windows
aligned bottom-right, softcap, ALiBi, a row that sees no key gives 0 and an LSE of +inf; cache
rows past the valid length are never read. Without a GPU the Triton kernels run under the
interpreter and the CUDA C++ ones in the host SIMT runtime. fp32 to 1e-5 of the output's scale;
fp16/bf16 by flash-attn's error-ratio rule. What only one backend has (Triton's paged caches read
in place and its split heuristic; the CUDA split count; the CPU kernel's ISAs, threads and
native-call splitting) is in test_triton_decode.py, test_cuda_decode.py and test_cpu_kvcache.py.
"""
from __future__ import annotations

import pytest
import torch

from backend_cases import backends
from decode_cases import DTYPE_IDS, DTYPES, LONG_CACHE, run_case

pytestmark = pytest.mark.usefixtures("poisoned")
BACKENDS = backends("triton", "cuda", "cpu")

HEADS = [(4, 2, 64), (6, 1, 59), (4, 4, 128), (2, 1, 1)]
HEADS_IDS = ["gqa-d64", "mqa-d59", "mha-d128", "gqa-d1"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k,head_dim", HEADS, ids=HEADS_IDS)
def test_decode_gqa_head_dims(backend, dtype, heads, heads_k, head_dim):
    run_case(backend, dtype, heads=heads, heads_k=heads_k, head_dim=head_dim)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,heads_k", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("head_dim", [1, 16, 59, 64, 111, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_decode_full_grid(backend, dtype, heads, heads_k, head_dim, causal):
    run_case(backend, dtype, heads=heads, heads_k=heads_k, head_dim=head_dim, causal=causal, new=2, seqlen_q=2)


APPEND = [(0, 1, True), (1, 1, True), (3, 4, True), (3, 2, False), (3, 4, False)]
APPEND_IDS = ["new0-q1", "new1-q1-causal", "new3-q4-causal", "new3-q2-full", "new3-q4-full"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("new,seqlen_q,causal", APPEND, ids=APPEND_IDS)
def test_decode_append_and_causal(backend, dtype, new, seqlen_q, causal):
    """Lnew 0/1/3 with per-batch lengths 0, 1 and 117 (a cache of 128 rows, two key blocks)."""
    run_case(backend, dtype, batch=3, heads=2, heads_k=1, seqlen_q=seqlen_q, new=new, causal=causal,
             lens=(0, 1, 117), cache_len=128, head_dim=40)


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
def test_decode_options(backend, dtype, option):
    run_case(backend, dtype, **OPTIONS[option])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_decode_long_cache_many_splits(backend, dtype):
    """Several splits' worth of keys, merged (decode_cases.LONG_CACHE)."""
    run_case(backend, dtype, **LONG_CACHE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_rows_that_see_no_key(backend):
    """More queries than keys, causal bottom-right: the first rows of batch 0 see no key."""
    out, lse = run_case(backend, torch.float32, seqlen_q=4, lens=(2, 50), causal=True, cache_len=64)
    assert (out[0, :2] == 0).all() and torch.isinf(lse[0, :, :2]).all() and (lse[0, :, :2] > 0).all()
    assert torch.isfinite(lse[0, :, 2:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_empty_cache(backend):
    """cache_seqlens = 0 and nothing appended: no key at all, output 0, lse +inf (two such
    sequences around one that has keys)."""
    out, lse = run_case(backend, torch.float32, batch=3, lens=(0, 5, 0), cache_len=16, causal=False)
    for b in (0, 2):
        assert (out[b] == 0).all() and torch.isinf(lse[b]).all() and (lse[b] > 0).all()
    assert torch.isfinite(lse[1]).all()
