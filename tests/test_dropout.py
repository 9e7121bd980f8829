"""Attention dropout on every backend with a dropout kernel (Triton: kernels/attention.py; native
CPU: csrc/cpu/attention_impl.h), through the backend's core ops, against the float64 reference
run with the same keep mask.

The kernels draw the mask from the counter-based Philox stream that fastattn.philox specifies,
so the mask is a function of ``(seed, offset, b, h, i, j)`` only: the reference, given that mask,
must match the forward and the gradients (fastattn.testing's rule; outputs poisoned with NaN).
The mask the forward applied is also read back exactly (``v = I`` makes ``out = dropout(P)``)
and compared with the specification bit for bit. What only one backend has (instruction sets
and thread counts on the CPU; the Triton mask's rate and counters, the public API's draws) is in
test_cpu_dropout.py and test_triton_dropout.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastattn import dispatch
from fastattn.attention_args import dropout_keep_mask
from attention_cases import DEVICE, check_with_the_same_mask, dropout_args, qkv

BACKENDS = [pytest.param(b, id=b, marks=pytest.mark.requires_backend(b)) for b in ("triton", "cpu")]
DTYPES, DTYPE_IDS = [torch.float32, torch.bfloat16, torch.float16], ["fp32", "bf16", "fp16"]
pytestmark = pytest.mark.usefixtures("poisoned")


# (batch, heads_q, heads_k, seqlen_q, seqlen_k, head_dim, dropout_p, options)
CASES = {
    "gqa-causal-br": (1, 4, 2, 70, 90, 32, 0.3, dict(causal=True, bottom_right=True)),
    "full-tl": (2, 2, 2, 65, 33, 64, 0.1, dict()),
    "gqa-window-softcap": (1, 4, 1, 80, 80, 40, 0.5, dict(window_left=17, window_right=9, softcap=5.0,
                                                          bottom_right=True)),
    "many-key-blocks": (1, 2, 1, 130, 300, 16, 0.2, dict(causal=True)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
# Many key blocks take seconds a case under the Triton interpreter: in the slow set.
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "many-key-blocks" else c
                                  for c in CASES], ids=list(CASES))
def test_dropout_forward_backward_match_reference_with_the_same_mask(backend, case, dtype):
    b, hq, hk, lq, lk, d, p, opts = CASES[case]
    q, k, v = qkv(b, hq, hk, lq, lk, d, dtype, seed=len(case))
    check_with_the_same_mask(backend, q, k, v, dropout_args(d, p, seed=987654321 + len(case), offset=3, **opts))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_varlen_uses_the_per_sequence_counters(backend):
    """Varlen: sequence s draws from ``[s, :, :Lq_s, :Lk_s]`` of the (sequences, heads,
    max_seqlen_q, max_seqlen_k) counter space."""
    lens_q, lens_k = [30, 70, 5, 1], [50, 90, 40, 30]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q, k, v = qkv(1, 4, 2, sum(lens_q), sum(lens_k), 32, torch.float32, seed=1)
    args = dropout_args(32, 0.4, causal=True, bottom_right=True, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    check_with_the_same_mask(backend, q, k, v, args, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_mask_is_the_specification_bit_for_bit(backend):
    """With ``v = I`` (``Lk == D == Dv``) the output row is ``dropout(P)``: zero exactly where the
    specification drops, and the keep rate is ``1 - p`` within a few standard deviations."""
    lq = lk = 64
    p = 0.35
    q, k, _ = qkv(2, 3, 3, lq, lk, lk, torch.float32, seed=5)
    v = torch.eye(lk, device=DEVICE).expand(2, 3, lk, lk).contiguous()
    args = dropout_args(lk, p, seed=77, offset=4096)
    core = dict(attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, args=args)
    fwd = dispatch.implementations("attention_fwd")[backend]
    assert fwd.supports(q, k, v, **core) is None
    out, _ = fwd.fn(q, k, v, **core)
    keep = dropout_keep_mask(q, k, args)
    assert torch.equal(out != 0, keep)
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)
