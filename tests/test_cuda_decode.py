"""CUDA C++ split-KV decoding (csrc/cuda/decode): what only this backend has. The cases every
decoding backend shares (against fastattn.reference in float64) are in tests/test_decode.py;
here: the split count the module picks does not change the result. Without a GPU the kernels
run on CPU tensors in the host SIMT runtime.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import testing
from fastattn.backends.cuda import kernels as cuda_backend
from decode_cases import DEVICE, reference_kvcache

pytestmark = [pytest.mark.requires_backend("cuda"), pytest.mark.usefixtures("poisoned")]


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
    o64, l64 = reference_kvcache(q, kc, vc, None, None, torch.float64, dict(cache_seqlens=lens))
    testing.assert_close(o2, o64, None, "out")
    testing.assert_close(l2, l64, None, "lse")
