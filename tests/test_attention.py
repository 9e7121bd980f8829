"""Attention, forward and backward, through the public functions on every backend that has an
attention kernel (Triton: kernels/attention.py; CUDA C++: csrc/cuda/attention; the native CPU
kernels: csrc/cpu/attention*), against :mod:`fastattn.reference` in float64.

One case list serves all three: both causal alignments (SDPA's top-left, flash-attn's
bottom-right, with rows that see no key), GQA/MQA, sliding windows, softcap, ALiBi, boolean and
float masks broadcast by strides, packed variable-length batches and strided views. Each case
checks the output, the log-sum-exp where the API returns it, and the gradients of q, k and v
for one random ``dout``: fp32 to 1e-5 relative, fp16/bf16 by flash-attn's error-ratio rule
(fastattn.testing). Every allocation is poisoned (NaN), so an element a kernel never writes
fails. Without a GPU the Triton kernels run under the interpreter and the CUDA C++ ones in the
host SIMT runtime.

A backend may decline a case only where :data:`DECLINED` says it does (the reason is the
dispatcher's); a backend that starts serving such a case fails here until the table says so.
What only one backend has (tiles and block splits, instruction sets, the simulator's launch
limits, deterministic dQ, compile checks) stays in test_triton_attention*.py,
test_cpu_attention.py, test_cuda_attention*.py.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference, testing
from backend_cases import backends, compare_on_backend, device_of

pytestmark = pytest.mark.usefixtures("poisoned")
BACKENDS = backends("triton", "cuda", "cpu")
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
DTYPE_IDS = {F16: "fp16", BF16: "bf16", F32: "fp32"}

DECLINED = {
    # backend: {feature: why}, the features a backend's supports() turns down by design
    "cuda": {"fp32": "tensor-core kernels: fp16/bf16 only", "mask": "no attn_mask input",
             "varlen": "no cu_seqlens input"},
}


def _check(backend, features, fn, ref_fn, inputs, dtype, lse=True):
    compare_on_backend(backend, DECLINED, features | {DTYPE_IDS[dtype]}, fn, ref_fn, inputs, dtype,
                       results=2 if lse else 1)


def _flash_qkv(b, hq, hk, lq, lk, d, dtype, dev, seed=0):
    return (testing.randn(b, lq, hq, d, dtype=dtype, seed=seed, device=dev, requires_grad=True),
            testing.randn(b, lk, hk, d, dtype=dtype, seed=seed + 1, device=dev, requires_grad=True),
            testing.randn(b, lk, hk, d, dtype=dtype, seed=seed + 2, device=dev, requires_grad=True))


def _flash(**kw):
    """flash_attn_func with ``kw``, returning ``(out, lse)``; the reference's twin."""
    def ours(backend, q, k, v, *rest):
        out, lse, _ = fastattn.flash_attn_func(q, k, v, return_attn_probs=True, backend=backend, **_with(kw, rest))
        return out, lse

    def ref(q, k, v, *rest):
        out, lse, _ = reference.flash_attn_func(q, k, v, return_attn_probs=True, **_with(kw, rest))
        return out, lse

    return ours, ref


def _with(kw, rest):
    return {**kw, "alibi_slopes": rest[0]} if rest else kw


# (seqlen_q, seqlen_k, heads_q, heads_k, head_dim): Lq < Lk and Lq > Lk (leading rows see no key
# when causal), GQA and MQA, head dims that are and are not a tile size.
ALIGNMENT = [(17, 113, 4, 2, 64), (113, 17, 2, 1, 40), (70, 70, 2, 2, 128)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("lq,lk,hq,hk,d", ALIGNMENT, ids=[f"q{a}-k{b}-h{c}:{e}-d{f}" for a, b, c, e, f in ALIGNMENT])
def test_flash_causal_bottom_right(backend, dtype, lq, lk, hq, hk, d):
    dev = device_of(backend)
    ours, ref = _flash(causal=True)
    _check(backend, set(), ours, ref, _flash_qkv(2, hq, hk, lq, lk, d, dtype, dev), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_top_left_gqa(backend, dtype, causal):
    """SDPA's layout and alignment (a causal query row i sees keys j <= i, Lq < Lk), enable_gqa."""
    dev = device_of(backend)
    q = testing.randn(1, 4, 40, 64, dtype=dtype, seed=1, device=dev, requires_grad=True)
    k = testing.randn(1, 2, 70, 64, dtype=dtype, seed=2, device=dev, requires_grad=True)
    v = testing.randn(1, 2, 70, 64, dtype=dtype, seed=3, device=dev, requires_grad=True)

    def ours(backend, q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True, backend=backend)

    def ref(q, k, v):
        return reference.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    _check(backend, set(), ours, ref, (q, k, v), dtype, lse=False)


WINDOWS = [(8, 0), (5, 3), (-1, 4), (16, -1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("window", WINDOWS, ids=[f"w{a}-{b}" for a, b in WINDOWS])
def test_sliding_window(backend, dtype, window):
    """flash-attn's window_size (left, right), -1 = unbounded on that side, over 100 keys (several
    key blocks skipped entirely), Lq != Lk."""
    dev = device_of(backend)
    ours, ref = _flash(window_size=window)
    _check(backend, set(), ours, ref, _flash_qkv(1, 2, 1, 80, 100, 64, dtype, dev, seed=4), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("slopes", ["per-head", "per-batch-head"])
def test_softcap_and_alibi_with_causal_window(backend, dtype, slopes):
    dev = device_of(backend)
    ours, ref = _flash(causal=True, window_size=(24, 0), softcap=5.0)
    q, k, v = _flash_qkv(2, 4, 2, 50, 66, 64, dtype, dev, seed=5)
    shape = (4,) if slopes == "per-head" else (2, 4)
    alibi = (torch.rand(*shape, generator=torch.Generator().manual_seed(6)) * 0.5).to(dev)
    _check(backend, set(), ours, ref, (q, k, v, alibi), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_attn_mask_broadcast_by_strides(backend, dtype, kind):
    """SDPA's attn_mask, (B, 1, Lq, Lk) broadcast over heads (stride 0): bool (True = take part)
    or float (added to the scores, -inf where masked)."""
    dev = device_of(backend)
    q = testing.randn(2, 2, 33, 64, dtype=dtype, seed=7, device=dev, requires_grad=True)
    k = testing.randn(2, 2, 90, 64, dtype=dtype, seed=8, device=dev, requires_grad=True)
    v = testing.randn(2, 2, 90, 64, dtype=dtype, seed=9, device=dev, requires_grad=True)
    keep = torch.rand(2, 1, 33, 90, generator=torch.Generator().manual_seed(10)) > 0.3
    keep[:, :, :, 0] = True  # every row sees a key: a fully masked row's value is torch-specific
    mask = keep if kind == "bool" else torch.where(keep, torch.randn(keep.shape) * 0.5, float("-inf"))
    mask = mask.to(device=dev, dtype=torch.bool if kind == "bool" else dtype)

    def ours(backend, q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)

    def ref(q, k, v):
        return reference.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    _check(backend, {"mask"}, ours, ref, (q, k, v), dtype, lse=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_packed_batch(backend, dtype, causal):
    """flash_attn_varlen_func: three sequences of different query and key lengths packed in one
    tensor (one shorter in queries than in keys, one longer: bottom-right causal rows see no key)."""
    dev = device_of(backend)
    cu_q = torch.tensor([0, 17, 30, 95], dtype=torch.int32, device=dev)
    cu_k = torch.tensor([0, 40, 45, 110], dtype=torch.int32, device=dev)
    q = testing.randn(95, 4, 40, dtype=dtype, seed=11, device=dev, requires_grad=True)
    k = testing.randn(110, 2, 40, dtype=dtype, seed=12, device=dev, requires_grad=True)
    v = testing.randn(110, 2, 40, dtype=dtype, seed=13, device=dev, requires_grad=True)

    def ours(backend, q, k, v):
        out, lse, _ = fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 65, 65, causal=causal,
                                                      return_attn_probs=True, backend=backend)
        return out, lse

    def ref(q, k, v):
        out, lse, _ = reference.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 65, 65, causal=causal,
                                                       return_attn_probs=True)
        return out, lse

    _check(backend, {"varlen"}, ours, ref, (q, k, v), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
def test_strided_views_of_a_packed_projection(backend, dtype):
    """q, k, v as views into one (B, L, 3, H, D) projection output (row stride 3*H*D), as models
    pass them: taken by strides, with the same answer as contiguous inputs."""
    dev = device_of(backend)
    packed = testing.randn(2, 70, 3, 2, 64, dtype=dtype, seed=14, device=dev)
    ours, ref = _flash(causal=True)

    def views(backend, packed):
        return ours(backend, packed[:, :, 0], packed[:, :, 1], packed[:, :, 2])

    def ref_views(packed):
        return ref(packed[:, :, 0], packed[:, :, 1], packed[:, :, 2])

    _check(backend, set(), views, ref_views, (packed.requires_grad_(),), dtype)
