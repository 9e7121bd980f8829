"""CUDA C++ attention backward (csrc/cuda/attention/flash_bwd*.cuh) through the public API with
``backend="cuda"``: dq, dk and dv against :mod:`fastattn.reference`'s float64 gradients.

Without a GPU the kernels run on CPU tensors in the host SIMT runtime (``fastattn._cuda_sim``),
which is slow (one OS thread per CUDA thread), so the default set is a few small shapes that
still cover several query and key blocks, and the cross-product is marked slow. fp16/bf16 by
flash-attn's error-ratio rule (:func:`fastattn.testing.assert_close`): at most twice the
error of the reference computed in the input dtype, plus the floor. Every allocation of the
call (gradients, the kernels' workspace) is poisoned with NaN, so an element the kernels never
write, or a workspace value read before it is written, fails.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import fastattn
from fastattn import dispatch, reference, testing
from fastattn.backends.cuda import kernels as cuda_backend
from fastattn.backends.cuda import attention as cuda_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_WHY = dispatch.unavailable_reason("cuda", torch.device(DEVICE))
pytestmark = [pytest.mark.skipif(_WHY is not None, reason=f"cuda backend: {_WHY}"), pytest.mark.usefixtures("poisoned")]

FLOOR = 1e-4  # the fp32 accumulation of long rows
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _grads(fn, inputs, dout, compute_dtype=None):
    return testing.forward_and_grads(fn, inputs, dout, compute_dtype=compute_dtype)[1]


def _flash_case(dtype, lq, lk, d, causal, *, heads=2, heads_k=1, batch=1, window=(-1, -1), softcap=0.0, alibi=None,
                deterministic=False, seed=0):
    """flash layout (B, L, H, D), causal and window aligned bottom-right."""
    q = testing.randn(batch, lq, heads, d, dtype=dtype, seed=seed, device=DEVICE)
    k = testing.randn(batch, lk, heads_k, d, dtype=dtype, seed=seed + 1, device=DEVICE)
    v = testing.randn(batch, lk, heads_k, d, dtype=dtype, seed=seed + 2, device=DEVICE)
    dout = testing.randn(batch, lq, heads, d, dtype=dtype, seed=seed + 3, device=DEVICE)
    kw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi, deterministic=deterministic)

    def run(fn):
        return lambda q, k, v: fn(q, k, v, **kw)

    got = _grads(run(lambda *a, **k: fastattn.flash_attn_func(*a, backend="cuda", **k)), (q, k, v), dout)
    ref64 = _grads(run(reference.flash_attn_func), (q, k, v), dout, torch.float64)
    ref_lp = _grads(run(reference.flash_attn_func), (q, k, v), dout)
    for name, g, g64, glp in zip(("dq", "dk", "dv"), got, ref64, ref_lp):
        testing.assert_close(g, g64, glp, name, floor=FLOOR)
    return got


def _sdpa_case(dtype, lq, lk, d, causal, *, heads=2, heads_k=2):
    """SDPA layout (B, H, L, D), causal aligned top-left; GQA through enable_gqa."""
    q = testing.randn(1, heads, lq, d, dtype=dtype, seed=11, device=DEVICE)
    k = testing.randn(1, heads_k, lk, d, dtype=dtype, seed=12, device=DEVICE)
    v = testing.randn(1, heads_k, lk, d, dtype=dtype, seed=13, device=DEVICE)
    dout = testing.randn(1, heads, lq, d, dtype=dtype, seed=14, device=DEVICE)
    kw = dict(is_causal=causal, enable_gqa=heads != heads_k)
    got = _grads(lambda q, k, v: fastattn.scaled_dot_product_attention(q, k, v, backend="cuda", **kw), (q, k, v), dout)
    ref64 = _grads(lambda q, k, v: reference.scaled_dot_product_attention(q, k, v, **kw), (q, k, v), dout,
                   torch.float64)
    ref_lp = _grads(lambda q, k, v: reference.scaled_dot_product_attention(q, k, v, **kw), (q, k, v), dout)
    for name, g, g64, glp in zip(("dq", "dk", "dv"), got, ref64, ref_lp):
        testing.assert_close(g, g64, glp, name, floor=FLOOR)


@pytest.fixture
def bwd_calls(monkeypatch):
    """Counts the calls of the native backward (so that a silent fallback fails the test)."""
    mod = cuda_backend._module(torch.device(DEVICE))
    calls = []
    native = mod.attention_bwd

    def counted(spec):
        calls.append(spec)
        return native(spec)

    monkeypatch.setattr(mod, "attention_bwd", counted)
    return calls


# Two query blocks and one or two key blocks of 64 (ragged), GQA 2:1, Lq > Lk bottom-right so
# that some rows see no key (their gradient is 0).
def test_causal_bottom_right_gqa(bwd_calls):
    _flash_case(torch.float16, 90, 70, 64, True)
    assert len(bwd_calls) == 1 and not bwd_calls[0]["deterministic"]


def test_padded_head_dim_deterministic(bwd_calls):
    """Head dim 40 runs at 64 (zero-filled, padded columns never stored); the dq pass without atomics."""
    _flash_case(torch.bfloat16, 70, 100, 40, True, deterministic=True)
    assert len(bwd_calls) == 1 and bwd_calls[0]["deterministic"] and bwd_calls[0]["head_dim"] == 40


def test_window_softcap_alibi(bwd_calls):
    """A sliding window (tiles left of it skipped, edges masked), softcap's derivative, ALiBi."""
    slopes = torch.rand(2, device=DEVICE, dtype=torch.float32) * 0.3
    _flash_case(torch.float16, 100, 90, 64, False, window=(20, 30), softcap=5.0, alibi=slopes)
    assert len(bwd_calls) == 1


def test_sdpa_top_left_multi_head_group():
    _sdpa_case(torch.bfloat16, 80, 130, 64, True, heads=4, heads_k=2)


def test_reports_name_cuda():
    """The cuda backend's backward is its own (reports must not say another backend ran it)."""
    assert dispatch.runs_on("attention_bwd", "cuda", DEVICE) == "cuda"


def test_head_dims_over_128_run_cuda(bwd_calls):
    """Head dim 136 runs the head-dim-256 kernels (zero-filled to 256; two warps of a key group
    share its dK/dV columns): CUDA C++, not a fallback, by the error-ratio rule."""
    q = torch.empty(1, 2, 8, 256, dtype=torch.float16, device=DEVICE)
    assert cuda_attention.backward_unsupported(q) is None
    assert dispatch.runs_on("attention_bwd", "cuda", DEVICE, q, q, q) == "cuda"
    _flash_case(torch.float16, 17, 20, 136, True)
    assert len(bwd_calls) == 1 and bwd_calls[0]["head_dim"] == 136


def _counted(backend: str, calls: list) -> dispatch.Impl:
    """``backend``'s attention_bwd implementation, appending its name to ``calls`` when called."""
    impl = dispatch.implementations("attention_bwd")[backend]

    def fn(*args, **kwargs):
        calls.append(backend)
        return impl.fn(*args, **kwargs)

    return dataclasses.replace(impl, fn=fn)


def test_reports_name_the_backend_that_runs_each_call(monkeypatch):
    """Given a call's inputs (what bench's reports pass), dispatch.runs_on names the backend whose
    backward computes it: with a build of the kernels that lacks the backward (the calls cuda
    declines), the fallback, whose backward is then the one called; with it, cuda."""
    selected = []
    select = dispatch.select

    def spy(ops, requested, device, *args, **kwargs):
        selected.append((device, args, kwargs))
        return select(ops, requested, device, *args, **kwargs)

    monkeypatch.setattr(dispatch, "select", spy)
    mod = cuda_backend._module(torch.device(DEVICE))
    calls = []
    for has_bwd in (False, True):
        with monkeypatch.context() as m:
            if not has_bwd:
                m.delattr(mod, "attention_bwd")
            q, k, v = (testing.randn(1, 9, 2, 64, dtype=torch.float16, seed=s, device=DEVICE).requires_grad_()
                       for s in range(3))
            out = fastattn.flash_attn_func(q, k, v, causal=True, backend="cuda")
            device, args, kwargs = selected[-1]
            by = dispatch.runs_on("attention_bwd", "cuda", device, *args, **kwargs)
            assert (by == "cuda") == has_bwd, (has_bwd, by)
            m.setitem(dispatch._IMPLS, ("attention_bwd", by), _counted(by, calls))
            out.backward(torch.ones_like(out))
            assert calls[-1] == by, (has_bwd, calls)


# The cross-product: both dtypes, kernel head dims 64 and 128 and padded ones, several query and
# key blocks (ragged), both causal alignments, windows, GQA/MQA, both dq paths.
SLOW = [(dt, lq, lk, d, causal, det) for dt in ("fp16", "bf16") for d in (64, 128)
        for (lq, lk) in ((1, 130), (130, 130), (200, 70), (70, 200)) for causal in (False, True)
        for det in (False, True) if not (d == 128 and det and lq == 1)]


@pytest.mark.slow
@pytest.mark.parametrize("dt,lq,lk,d,causal,det", SLOW,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-{'causal' if c[4] else 'full'}-"
                              f"{'det' if c[5] else 'atomic'}" for c in SLOW])
def test_flash_layout_grid(dt, lq, lk, d, causal, det):
    _flash_case(DTYPES[dt], lq, lk, d, causal, heads=2, heads_k=1, deterministic=det)


PADDED = [("fp16", 8, True), ("bf16", 96, False), ("fp16", 120, True), ("bf16", 72, False)]


@pytest.mark.slow
@pytest.mark.parametrize("dt,d,causal", PADDED, ids=[f"{c[0]}-d{c[1]}-{'causal' if c[2] else 'full'}" for c in PADDED])
def test_padded_head_dims(dt, d, causal):
    _flash_case(DTYPES[dt], 80, 70, d, causal, heads=2, heads_k=1)


WINDOWS = [("fp16", 200, 200, 64, True, (50, 0), False), ("bf16", 150, 90, 64, False, (20, 30), True),
           ("fp16", 70, 200, 128, False, (10, -1), False), ("bf16", 150, 60, 64, False, (-1, 5), True)]


@pytest.mark.slow
@pytest.mark.parametrize("dt,lq,lk,d,causal,window,det", WINDOWS,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-w{c[5][0]}_{c[5][1]}" for c in WINDOWS])
def test_sliding_window(dt, lq, lk, d, causal, window, det):
    _flash_case(DTYPES[dt], lq, lk, d, causal, heads=2, heads_k=1, window=window, deterministic=det)


@pytest.mark.slow
@pytest.mark.parametrize("dt,d,causal,cap,per_batch,det", [
    ("fp16", 64, True, 0.0, False, False), ("bf16", 128, False, 0.0, True, True),
    ("fp16", 96, False, 10.0, False, True), ("bf16", 64, True, 2.0, True, False),
], ids=["fp16-d64-alibi", "bf16-d128-alibi-per-batch-det", "fp16-d96-alibi-cap10-det", "bf16-d64-cap2-alibi"])
def test_softcap_and_alibi(dt, d, causal, cap, per_batch, det):
    batch, heads = 2, 2
    slopes = torch.rand((batch, heads) if per_batch else (heads,), device=DEVICE, dtype=torch.float32) * 0.5
    _flash_case(DTYPES[dt], 80, 100, d, causal, heads=heads, heads_k=1, batch=batch, softcap=cap, alibi=slopes,
                deterministic=det)


@pytest.mark.slow
@pytest.mark.parametrize("dt,d,causal,det", [("fp16", 64, True, False), ("bf16", 48, False, True),
                                             ("bf16", 192, True, True), ("fp16", 128, False, False)],
                         ids=["fp16-d64-causal-atomic", "bf16-d48-full-det", "bf16-d192-causal-det", "fp16-d128-full-atomic"])
def test_softcap_without_alibi(bwd_calls, dt, d, causal, det):
    """Softcap alone: at kernel head dim 64 its own element loop, at 128 and 256 the ALiBi loop
    with a zero bias (with_score_loop)."""
    _flash_case(DTYPES[dt], 90, 100, d, causal, heads=2, heads_k=1, softcap=3.0, deterministic=det)
    assert len(bwd_calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("heads,heads_k", [(4, 1), (4, 2), (3, 3)], ids=["mqa", "gqa", "mha"])
def test_sdpa_layout_groups(heads, heads_k):
    _sdpa_case(torch.float16, 130, 100, 64, True, heads=heads, heads_k=heads_k)


# Head dims 129-256 (kernel dim 256: 136 and 192 zero-filled). SMEM_PER_BLOCK picks the tiles the
# launcher chooses for a device with that much shared memory a block (the simulator's stand-in for
# it): sm_80/sm_90 (64 keys a dK/dV CTA, 8 warps; dq 32 keys a step) or sm_86/sm_89 (32 keys, 4
# warps; dq 16 keys).
SMEM_PER_BLOCK = {"wide": 163 * 1024, "narrow": 99 * 1024}
HD256 = [("fp16", 130, 100, 256, True, False, "wide"), ("bf16", 70, 150, 256, False, True, "wide"),
         ("bf16", 130, 100, 192, True, True, "narrow"), ("fp16", 100, 130, 136, False, False, "narrow"),
         ("fp16", 1, 100, 256, True, True, "narrow"), ("bf16", 90, 90, 136, True, False, "wide")]


@pytest.mark.slow
@pytest.mark.parametrize("dt,lq,lk,d,causal,det,tiles", HD256,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-d{c[3]}-{'causal' if c[4] else 'full'}-"
                              f"{'det' if c[5] else 'atomic'}-{c[6]}" for c in HD256])
def test_head_dims_over_128(monkeypatch, bwd_calls, dt, lq, lk, d, causal, det, tiles):
    if DEVICE == "cpu":
        monkeypatch.setenv("FASTATTN_SIM_SMEM_PER_BLOCK", str(SMEM_PER_BLOCK[tiles]))
    _flash_case(DTYPES[dt], lq, lk, d, causal, heads=4, heads_k=2, deterministic=det)
    assert len(bwd_calls) == 1


HD256_FEATURES = [("fp16", 256, (30, 10), 0.0, False, "wide"), ("bf16", 192, (-1, -1), 5.0, True, "narrow"),
                  ("bf16", 256, (40, -1), 8.0, False, "narrow")]


@pytest.mark.slow
@pytest.mark.parametrize("dt,d,window,cap,det,tiles", HD256_FEATURES,
                         ids=[f"{c[0]}-d{c[1]}-w{c[2][0]}_{c[2][1]}-cap{c[3]:g}-{'det' if c[4] else 'atomic'}-{c[5]}"
                              for c in HD256_FEATURES])
def test_head_dims_over_128_window_softcap_alibi(monkeypatch, bwd_calls, dt, d, window, cap, det, tiles):
    """Windows, softcap and per-batch-head ALiBi at kernel head dim 256, MQA."""
    if DEVICE == "cpu":
        monkeypatch.setenv("FASTATTN_SIM_SMEM_PER_BLOCK", str(SMEM_PER_BLOCK[tiles]))
    slopes = torch.rand(2, 3, device=DEVICE, dtype=torch.float32) * 0.3
    _flash_case(DTYPES[dt], 110, 90, d, False, heads=3, heads_k=1, batch=2, window=window, softcap=cap, alibi=slopes,
                deterministic=det)
    assert len(bwd_calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("lq,lk,d,tiles", [(80, 130, 256, "wide"), (130, 70, 200, "narrow")],
                         ids=["q80-k130-d256-wide", "q130-k70-d200-narrow"])
def test_head_dims_over_128_top_left(monkeypatch, bwd_calls, lq, lk, d, tiles):
    """SDPA's causal alignment (top-left) at kernel head dim 256, GQA through enable_gqa."""
    if DEVICE == "cpu":
        monkeypatch.setenv("FASTATTN_SIM_SMEM_PER_BLOCK", str(SMEM_PER_BLOCK[tiles]))
    _sdpa_case(torch.bfloat16, lq, lk, d, True, heads=4, heads_k=2)
    assert len(bwd_calls) == 1


@pytest.mark.slow
def test_deterministic_repeats_bitwise():
    """deterministic=True: the same gradients, bit for bit, on a second run (no atomics)."""
    a = _flash_case(torch.bfloat16, 150, 150, 64, True, heads=4, heads_k=2, deterministic=True, seed=3)
    b = _flash_case(torch.bfloat16, 150, 150, 64, True, heads=4, heads_k=2, deterministic=True, seed=3)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
