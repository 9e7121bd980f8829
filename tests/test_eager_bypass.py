"""Plain eager calls run a custom op's body without torch.library's dispatch
(:mod:`fastattn.ops.eager`); anything a tracer watches still goes through the op."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastattn
from fastattn import testing
from fastattn.ops import kvcache as kvcache_op
from fastattn.ops.eager import runs_eagerly


class _Recording(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_plain_tensors_run_eagerly():
    assert runs_eagerly(torch.ones(2), None)


def test_fake_tensors_and_dispatch_modes_do_not():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.ones(2))
        assert not runs_eagerly(fake)
    with _Recording():
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
    with _Recording() as watched:
        fastattn.flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v, cache_seqlens=lens,
                                         causal=True, backend="cpu")
    assert any("fastattn.attention_kvcache" in op for op in watched.ops), watched.ops


def test_eager_and_custom_op_results_are_identical():
    q, k_cache, v_cache, k, v, lens = _decode_inputs(2)
    caches = (k_cache.clone(), v_cache.clone())
    eager = fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens, causal=True, backend="cpu",
                                             return_softmax_lse=True)
    with _Recording():
        through_op = fastattn.flash_attn_with_kvcache(q, *caches, k, v, cache_seqlens=lens, causal=True, backend="cpu",
                                                      return_softmax_lse=True)
    for a, b in zip(eager, through_op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(k_cache, caches[0], rtol=0, atol=0)
