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
from decode_cases import backends

pytestmark = pytest.mark.usefixtures("poisoned")
BACKENDS = backends("triton", "cuda", "cpu")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
DTYPE_IDS = {F16: "fp16", BF16: "bf16", F32: "fp32"}

DECLINED = {
    # backend: {feature: why}, the features a backend's supports() turns down by design
    "cuda": {"fp32": "tensor-core kernels: fp16/bf16 only", "mask": "no attn_mask input",
             "varlen": "no cu_seqlens input"},
}


def _features(dtype, *features):
    return {DTYPE_IDS[dtype], *features}


def _declined(backend, features):
    return sorted(f for f in features if f in DECLINED.get(backend, {}))


def _check(backend, features, fn, ref_fn, inputs, dtype, lse=True):
    """``fn(backend, *inputs)`` against ``ref_fn(*inputs)`` (float64 and input-dtype runs):
    the output, the LSE (``lse``: both return ``(out, lse)``) and the gradients of every
    floating-point input that requires one."""
    expected_decline = _declined(backend, features)
    try:
        got = _run(lambda *xs: fn(backend, *xs), inputs, dtype)
    except ValueError as exc:
        if "cannot run" not in str(exc):
            raise
        assert expected_decline, f"{backend} declined a case it should serve: {str(exc).splitlines()[0]}"
        pytest.skip(f"{backend} declines {', '.join(expected_decline)}: {str(exc).splitlines()[0][:200]}")
    assert not expected_decline, f"{backend} now serves {expected_decline}: update DECLINED"
    ref64 = _run(ref_fn, inputs, torch.float64)
    ref_lowp = None if dtype == F32 else _run(ref_fn, inputs, None)
    results = 2 if lse else 1
    names = ["out", "lse"][:results] + [f"grad{i}" for i in range(len(got) - results)]
    # fp32 gradients are held relative to the largest of them: one can be ~0 by cancellation
    # (dq with a single visible key), and rounding in a cancelling sum is relative to its terms.
    grad_scale = max(float(g[torch.isfinite(g)].abs().max()) if torch.isfinite(g).any() else 0.0
                     for g in ref64[results:])
    for i, (name, g, r64) in enumerate(zip(names, got, ref64)):
        rlp = None if ref_lowp is None else ref_lowp[i]
        scale = grad_scale if (dtype == F32 and i >= results) else None
        testing.assert_close(g, r64, rlp, f"{backend} {name}", scale=scale)


def _run(fn, inputs, compute_dtype):
    """``(*results, *grads)`` of ``fn(*inputs)``: the first result's gradients for one fixed
    ``dout``, with respect to the inputs that require grad (cast to ``compute_dtype`` first,
    ``None`` keeps them)."""
    leaves, args = [], []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            t = t.detach().to(compute_dtype) if compute_dtype is not None else t.detach().clone()
            leaves.append(t.requires_grad_())
        args.append(t)  # other inputs (ALiBi slopes) as they are: the API's own dtype rules
    with torch.enable_grad():
        results = fn(*args)
        results = results if isinstance(results, tuple) else (results,)
        out = results[0]
        dout = testing.randn(*out.shape, dtype=torch.float32, seed=99, device=out.device).to(out.dtype)
        grads = torch.autograd.grad(out, leaves, dout)
    return tuple(r.detach() for r in results) + tuple(grads)


def _flash_qkv(b, hq, hk, lq, lk, d, dtype, seed=0):
    return (testing.randn(b, lq, hq, d, dtype=dtype, seed=seed, device=DEVICE, requires_grad=True),
            testing.randn(b, lk, hk, d, dtype=dtype, seed=seed + 1, device=DEVICE, requires_grad=True),
            testing.randn(b, lk, hk, d, dtype=dtype, seed=seed + 2, device=DEVICE, requires_grad=True))


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
    ours, ref = _flash(causal=True)
    _check(backend, _features(dtype), ours, ref, _flash_qkv(2, hq, hk, lq, lk, d, dtype), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_top_left_gqa(backend, dtype, causal):
    """SDPA's layout and alignment (a causal query row i sees keys j <= i, Lq < Lk), enable_gqa."""
    q = testing.randn(1, 4, 40, 64, dtype=dtype, seed=1, device=DEVICE, requires_grad=True)
    k = testing.randn(1, 2, 70, 64, dtype=dtype, seed=2, device=DEVICE, requires_grad=True)
    v = testing.randn(1, 2, 70, 64, dtype=dtype, seed=3, device=DEVICE, requires_grad=True)

    def ours(backend, q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True, backend=backend)

    def ref(q, k, v):
        return reference.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    _check(backend, _features(dtype), ours, ref, (q, k, v), dtype, lse=False)


WINDOWS = [(8, 0), (5, 3), (-1, 4), (16, -1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("window", WINDOWS, ids=[f"w{a}-{b}" for a, b in WINDOWS])
def test_sliding_window(backend, dtype, window):
    """flash-attn's window_size (left, right), -1 = unbounded on that side, over 100 keys (several
    key blocks skipped entirely), Lq != Lk."""
    ours, ref = _flash(window_size=window)
    _check(backend, _features(dtype), ours, ref, _flash_qkv(1, 2, 1, 80, 100, 64, dtype, seed=4), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("slopes", ["per-head", "per-batch-head"])
def test_softcap_and_alibi_with_causal_window(backend, dtype, slopes):
    ours, ref = _flash(causal=True, window_size=(24, 0), softcap=5.0)
    q, k, v = _flash_qkv(2, 4, 2, 50, 66, 64, dtype, seed=5)
    shape = (4,) if slopes == "per-head" else (2, 4)
    alibi = (torch.rand(*shape, generator=torch.Generator().manual_seed(6)) * 0.5).to(DEVICE)
    _check(backend, _features(dtype), ours, ref, (q, k, v, alibi), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_attn_mask_broadcast_by_strides(backend, dtype, kind):
    """SDPA's attn_mask, (B, 1, Lq, Lk) broadcast over heads (stride 0): bool (True = take part)
    or float (added to the scores, -inf where masked)."""
    q = testing.randn(2, 2, 33, 64, dtype=dtype, seed=7, device=DEVICE, requires_grad=True)
    k = testing.randn(2, 2, 90, 64, dtype=dtype, seed=8, device=DEVICE, requires_grad=True)
    v = testing.randn(2, 2, 90, 64, dtype=dtype, seed=9, device=DEVICE, requires_grad=True)
    keep = torch.rand(2, 1, 33, 90, generator=torch.Generator().manual_seed(10)) > 0.3
    keep[:, :, :, 0] = True  # every row sees a key: a fully masked row's value is torch-specific
    mask = keep if kind == "bool" else torch.where(keep, torch.randn(keep.shape) * 0.5, float("-inf"))
    mask = mask.to(device=DEVICE, dtype=torch.bool if kind == "bool" else dtype)

    def ours(backend, q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)

    def ref(q, k, v):
        return reference.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    _check(backend, _features(dtype, "mask"), ours, ref, (q, k, v), dtype, lse=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_packed_batch(backend, dtype, causal):
    """flash_attn_varlen_func: three sequences of different query and key lengths packed in one
    tensor (one shorter in queries than in keys, one longer: bottom-right causal rows see no key)."""
    cu_q = torch.tensor([0, 17, 30, 95], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 40, 45, 110], dtype=torch.int32, device=DEVICE)
    q = testing.randn(95, 4, 40, dtype=dtype, seed=11, device=DEVICE, requires_grad=True)
    k = testing.randn(110, 2, 40, dtype=dtype, seed=12, device=DEVICE, requires_grad=True)
    v = testing.randn(110, 2, 40, dtype=dtype, seed=13, device=DEVICE, requires_grad=True)

    def ours(backend, q, k, v):
        out, lse, _ = fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 65, 65, causal=causal,
                                                      return_attn_probs=True, backend=backend)
        return out, lse

    def ref(q, k, v):
        out, lse, _ = reference.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 65, 65, causal=causal,
                                                       return_attn_probs=True)
        return out, lse

    _check(backend, _features(dtype, "varlen"), ours, ref, (q, k, v), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F32], ids=DTYPE_IDS.get)
def test_strided_views_of_a_packed_projection(backend, dtype):
    """q, k, v as views into one (B, L, 3, H, D) projection output (row stride 3*H*D), as models
    pass them: taken by strides, with the same answer as contiguous inputs."""
    packed = testing.randn(2, 70, 3, 2, 64, dtype=dtype, seed=14, device=DEVICE)
    ours, ref = _flash(causal=True)

    def views(backend, packed):
        return ours(backend, packed[:, :, 0], packed[:, :, 1], packed[:, :, 2])

    def ref_views(packed):
        return ref(packed[:, :, 0], packed[:, :, 1], packed[:, :, 2])

    _check(backend, _features(dtype), views, ref_views, (packed.requires_grad_(),), dtype)
