"""Plain eager calls run a custom op's body without torch.library's dispatch
(:mod:`fastattn.ops.eager`); anything a tracer watches still goes through the op."""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import testing
from fastattn.ops import kvcache as kvcache_op
from fastattn.ops.eager import runs_eagerly
from decode_cases import check
from recording_mode import RecordingMode


def test_plain_tensors_run_eagerly():
    assert runs_eagerly(torch.ones(2), None)


def test_fake_tensors_and_dispatch_modes_do_not():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.ones(2))
        assert not runs_eagerly(fake)
    with RecordingMode():
        assert not runs_eagerly(torch.ones(2))


def _decode_inputs(seed):
    """A decoding step with appended keys, for the cpu backend (named: auto may hand a step
    this small to torch's own kernel)."""
    q = testing.randn(2, 1, 4, 32, seed=seed)
    k_cache, v_cache = testing.randn(2, 24, 2, 32, seed=seed + 1), testing.randn(2, 24, 2, 32, seed=seed + 2)
    k, v = testing.randn(2, 1, 2, 32, seed=seed + 3), testing.randn(2, 1, 2, 32, seed=seed + 4)
    lens = torch.tensor([5, 17], dtype=torch.int32)
    return q, k_cache, v_cache, k, v, lens


def test_eager_append_skips_the_op_and_bumps_the_caches_version_counters(monkeypatch):
    """No dispatch through the custom op; its in-place contract kept: autograd sees that the
    caches changed."""
    monkeypatch.setattr(kvcache_op, "_attention_kvcache",
                        lambda *a, **k: pytest.fail("a plain eager call went through the custom op"))
    q, k_cache, v_cache, k, v, lens = _decode_inputs(0)
    before = (k_cache._version, v_cache._version)
    fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens, causal=True, backend="cpu")
    assert k_cache._version > before[0] and v_cache._version > before[1]


def test_a_watched_call_goes_through_the_custom_op():
    """Under a dispatch mode the call reaches fastattn::attention_kvcache; eagerly it does not."""
    q, k_cache, v_cache, k, v, lens = _decode_inputs(1)
    with RecordingMode() as watched:
        fastattn.flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v, cache_seqlens=lens,
                                         causal=True, backend="cpu")
    assert any("fastattn.attention_kvcache" in op for op in watched.ops), watched.ops


def test_eager_and_custom_op_results_are_identical():
    q, k_cache, v_cache, k, v, lens = _decode_inputs(2)
    caches = (k_cache.clone(), v_cache.clone())
    eager = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens, causal=True, backend="cpu",
                                             return_softmax_lse=True)
    with RecordingMode():
        through_op = fastattn.flash_attn_with_kvcache(q, *caches, k, v, cache_seqlens=lens, causal=True, backend="cpu",
                                                      return_softmax_lse=True)
    for a, b in zip(eager, through_op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(k_cache, caches[0], rtol=0, atol=0)


# ------------------------------------------------------------------ the short route of a decoding step


def _plain_step(dtype, seqlen_q=1, heads=8, heads_k=2, head_dim=64, new=1, lens="ragged", seed=0,
                heads_first=False):
    """A plain decoding step's arguments: ``lens`` "ragged"/"uniform" (int32 / int64 tensors),
    "int" or "none" (the whole cache, nothing appended: the Hugging Face pattern, whose caches
    are (B, Hk, L, D) buffers seen as (B, L, Hk, D) by strides when ``heads_first``)."""
    batch, cache_len = 3, 40
    q = testing.randn(batch, seqlen_q, heads, head_dim, seed=seed).to(dtype)
    shape = (batch, heads_k, cache_len, head_dim) if heads_first else (batch, cache_len, heads_k, head_dim)
    k_cache, v_cache = (testing.randn(*shape, seed=seed + i).to(dtype) for i in (1, 2))
    if heads_first:
        k_cache, v_cache = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    k = v = None
    if lens == "none":
        seqlens = None
    else:
        k, v = (testing.randn(batch, new, heads_k, head_dim, seed=seed + i).to(dtype) for i in (3, 4))
        seqlens = {"ragged": torch.tensor([5, 0, 31], dtype=torch.int32),
                   "uniform": torch.tensor([17] * batch, dtype=torch.int64), "int": 23}[lens]
    return q, k_cache, v_cache, k, v, seqlens


STEPS = [
    dict(dtype=torch.float32),
    dict(dtype=torch.bfloat16, lens="uniform", new=3, seqlen_q=3),
    dict(dtype=torch.float16, lens="int", heads=4, heads_k=4, head_dim=40),
    dict(dtype=torch.float32, lens="none", heads_first=True),
    dict(dtype=torch.bfloat16, lens="none", heads_first=True, seqlen_q=8, heads=6, heads_k=1),
]
STEP_IDS = ["fp32-ragged", "bf16-uniform-q3", "fp16-int-mha", "fp32-hf", "bf16-hf-q8-mqa"]


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("causal,softcap", [(True, 0.0), (False, 4.0)], ids=["causal", "softcap"])
def test_short_route_gives_the_op_s_answer_bit_for_bit(step, causal, softcap):
    """A plain eager step (fastattn.functional.kvcache_eager) and the same step through the custom
    op (a dispatch mode watching): the same output, LSE and caches, to the bit."""
    q, k_cache, v_cache, k, v, lens = _plain_step(**step)
    caches = (k_cache.clone(), v_cache.clone())
    opts = dict(cache_seqlens=lens, causal=causal, softcap=softcap, return_softmax_lse=True, backend="cpu")
    short = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, **opts)
    with RecordingMode() as watched:
        through_op = fastattn.flash_attn_with_kvcache(q, *caches, k, v, **opts)
    assert any("fastattn.attention_kvcache" in op for op in watched.ops)
    for a, b in zip(short, through_op):
        assert torch.equal(a, b)
    assert torch.equal(k_cache, caches[0]) and torch.equal(v_cache, caches[1])
    assert not short[0].isnan().any()


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_short_route_skips_selection_and_the_op(step, monkeypatch):
    """A plain step reaches the decoding kernel without backend selection, the op's body or its
    options record; the in-place append still bumps the caches' version counters."""
    from fastattn import dispatch
    from fastattn.backends.cpu import decode_crossover as cpu_decode_crossover
    from fastattn.backends.cpu import kvcache as cpu_kvcache

    monkeypatch.setattr(cpu_decode_crossover, "prefer_torch", lambda *a: False)
    for module, name in ((dispatch, "select"), (kvcache_op, "_decode"), (kvcache_op, "_attention_kvcache")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: pytest.fail(f"a plain step reached {_n}"))
    calls = []
    real = cpu_kvcache.decode_into
    monkeypatch.setattr(cpu_kvcache, "decode_into", lambda *a, **k: calls.append(1) or real(*a, **k))
    q, k_cache, v_cache, k, v, lens = _plain_step(**step)
    before = (k_cache._version, v_cache._version)
    fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens, causal=True)
    assert calls == [1]
    if k is not None:
        assert k_cache._version > before[0] and v_cache._version > before[1]


def test_short_route_is_checked_against_the_reference():
    """The Hugging Face pattern (whole heads-first cache, no append), GQA, bf16, on the short route."""
    q, k_cache, v_cache, _, _, _ = _plain_step(torch.bfloat16, lens="none", heads_first=True, seed=7)
    out, lse = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, return_softmax_lse=True, backend="cpu")
    from fastattn import reference

    ref = reference.flash_attn_with_kvcache(q, k_cache, v_cache, return_softmax_lse=True, upcast=True)
    lowp = reference.flash_attn_with_kvcache(q, k_cache, v_cache, return_softmax_lse=True)
    check(out, lse, ref, lowp)


@pytest.mark.parametrize("lens,message", [
    (torch.tensor([5, 0, 40], dtype=torch.int32), r"cache_seqlens \(\+ 1 new tokens\) must lie in \[0, 40\]"),
    (40, r"cache_seqlens \(\+ 1 new tokens\) must lie in \[0, 40\]"),
    (-1, r"cache_seqlens .* must lie in"),
], ids=["tensor", "int", "negative-int"])
def test_short_route_leaves_errors_to_the_op_s_checks(lens, message):
    q, k_cache, v_cache, k, v, _ = _plain_step(torch.float32)
    before = k_cache.clone()
    with pytest.raises(ValueError, match=message):
        fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens, causal=True)
    assert torch.equal(k_cache, before)  # nothing appended


def test_available_implementation_answers_without_raising(monkeypatch):
    """What the short routes ask dispatch on every call: the implementation where the backend
    runs and has one, else None (an unavailable backend, a missing op), never an exception."""
    from fastattn import dispatch

    dispatch._load_backends()
    monkeypatch.setattr(dispatch, "_IMPLS", dict(dispatch._IMPLS))
    monkeypatch.setattr(dispatch, "_AVAILABILITY", dict(dispatch._AVAILABILITY))
    monkeypatch.setattr(dispatch, "_REASONS", {})
    assert dispatch.available_implementation("kvcache_fwd", "cpu", "cpu").fn is dispatch.implementation(
        "kvcache_fwd", "cpu").fn
    assert dispatch.available_implementation("softmax_fwd", "cpu", "cpu") is None  # no CPU softmax kernel
    dispatch._AVAILABILITY["cpu"] = lambda device: "fastattn._C was not built"
    dispatch._REASONS.clear()
    assert dispatch.available_implementation("kvcache_fwd", "cpu", "cpu") is None
    # ... and then a plain step takes the full path, which falls back under auto.
    q, k_cache, v_cache, k, v, lens = _plain_step(torch.float32)
    out = fastattn.flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v, cache_seqlens=lens, causal=True)
    assert out.shape == q.shape and not out.isnan().any()
