"""Attention dropout in the native CPU attention (csrc/cpu/attention_impl.h): what only this
backend has. The checks every dropout backend shares (forward and gradients against the float64
reference run with fastattn.philox's keep mask, varlen counters, the mask bit for bit) are in
tests/test_dropout.py; here: every instruction set and thread count, and the public API's draw.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import testing
from attention_cases import check_with_the_same_mask, dropout_args, qkv

cpu = pytest.importorskip("fastattn.backends.cpu.attention", reason="fastattn._C (native CPU kernels) not built")
_ORDER = ["avx2", "avx512", "avx512bf16"]
ISAS = _ORDER[: _ORDER.index(cpu._C.cpu_attention_isa()) + 1] if cpu._C.cpu_attention_isa() in _ORDER else []
pytestmark = [pytest.mark.requires_backend("cpu"), pytest.mark.usefixtures("poisoned")]


@pytest.mark.parametrize("isa", ISAS, ids=ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dropout_every_instruction_set_and_thread_count(isa, dtype, threads, use_isa):
    """Each ISA this CPU has, at 1 and 2 threads (conftest's ``threads``)."""
    use_isa(isa)
    q, k, v = qkv(2, 4, 2, 90, 140, 48, dtype, seed=7, device="cpu")
    check_with_the_same_mask("cpu", q, k, v, dropout_args(48, 0.25, seed=2**63 + 12345, offset=1000, causal=True))


def test_public_api_dropout_on_cpu_is_reproducible():
    """``flash_attn_func(dropout_p=...)`` on CPU tensors runs the native kernel (no fallback)
    and draws one seed from torch's generator: the same manual seed gives the same output."""
    q, k, v = (testing.randn(1, 50, 2, 32, seed=s) for s in (1, 2, 3))
    torch.manual_seed(3)
    a = fastattn.flash_attn_func(q, k, v, dropout_p=0.2, causal=True, backend="cpu")
    torch.manual_seed(3)
    b = fastattn.flash_attn_func(q, k, v, dropout_p=0.2, causal=True, backend="cpu")
    torch.manual_seed(4)
    c = fastattn.flash_attn_func(q, k, v, dropout_p=0.2, causal=True, backend="cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
