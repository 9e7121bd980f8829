"""``torch.library.opcheck`` on the custom ops served by the ``cuda`` backend (the
simulated build on CPU tensors): schema, fake/meta implementation, autograd registration
and AOT dispatch agree with what the CUDA C++ kernels actually return."""
from __future__ import annotations

import pytest
import torch

import fastattn  # noqa: F401  (registers the fastattn:: ops)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.requires_backend("cuda")


def _r(*shape, dtype=torch.float32, grad=False):
    return torch.randn(*shape, device=DEVICE, dtype=dtype).requires_grad_(grad)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.slow)],
                         ids=["fp32", "bf16"])
def test_opcheck_ffn_ops(dtype):
    ops = torch.ops.fastattn
    torch.library.opcheck(ops.gated_act_fwd, (_r(3, 37, dtype=dtype, grad=True), _r(3, 37, dtype=dtype, grad=True),
                                              "swiglu", "cuda"))
    torch.library.opcheck(ops.gated_act_bwd, (_r(3, 37, dtype=dtype), _r(3, 37, dtype=dtype), _r(3, 37, dtype=dtype),
                                              "geglu_tanh", "cuda"))
    torch.library.opcheck(ops.bias_gelu_fwd, (_r(4, 24, dtype=dtype, grad=True), _r(24, dtype=dtype, grad=True),
                                              "none", "cuda"))
    torch.library.opcheck(ops.bias_gelu_bwd, (_r(4, 24, dtype=dtype), _r(4, 24, dtype=dtype), _r(24, dtype=dtype),
                                              "tanh", "cuda"))


def test_opcheck_softmax_ops():
    ops = torch.ops.fastattn
    mask = torch.rand(2, 1, 5, 33, device=DEVICE) < 0.3
    torch.library.opcheck(ops.scaled_masked_softmax_fwd, (_r(2, 3, 5, 33, grad=True), mask, 0.5, True, "cuda"))
    torch.library.opcheck(ops.scaled_masked_softmax_bwd,
                          (_r(2, 3, 5, 33), torch.softmax(_r(2, 3, 5, 33), -1), 0.5, "cuda"))


def test_opcheck_kvcache_op():
    from fastattn.attention_args import AttentionArgs
    from dataclasses import astuple

    q, kc, vc = _r(2, 1, 4, 32), _r(2, 40, 2, 32), _r(2, 40, 2, 32)
    kn, vn = _r(2, 1, 2, 32), _r(2, 1, 2, 32)
    lens = torch.tensor([3, 30], dtype=torch.int32, device=DEVICE)
    args = AttentionArgs(scale=32 ** -0.5, causal=True, bottom_right=True, max_seqlen_q=1, max_seqlen_k=40)
    torch.library.opcheck(torch.ops.fastattn.attention_kvcache,
                          (q, kc, vc, kn, vn, lens, None, *astuple(args), "cuda"))
