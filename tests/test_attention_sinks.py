"""Attention sinks (``learnable_sink``, gpt-oss's ``sinks``): one logit per query head in every
row's softmax denominator, carrying no value. Forward, backward (the sink's gradient included),
GQA, causal, windows, varlen and KV-cache decoding on every backend that serves the flash API
here, against ``fastattn.reference`` in float64 (the sink as an explicit extra score column,
differentiated by autograd)."""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference
from attention_cases import assert_close as _assert_close

BACKENDS = ["reference", "cpu", "triton"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _randn(*shape, seed, dtype=torch.float32, requires_grad=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return t.requires_grad_(requires_grad)


def _grads(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout.to(out.dtype))]


def _compare(got, ref64, ref_lowp, dtype):
    names = ["out", "dq", "dk", "dv", "dsink"][: len(got)]
    grad_scale = max(r.abs().max().item() for r in ref64[1:4]) if len(got) > 1 else None
    for name, g, r64, rlp in zip(names, got, ref64, ref_lowp):
        kind = "out" if name == "out" else "grad"
        # The sink gradient is a sum over every row of the batch: judged relative to its own scale.
        _assert_close(name, g, r64, rlp, kind, dtype, fp32_scale=None if name in ("out", "dsink") else grad_scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("causal, window", [(True, (-1, -1)), (False, (-1, -1)), (True, (7, 0)), (False, (4, 3))],
                         ids=["causal", "full", "causal-window", "window"])
def test_flash_attn_func_forward_and_backward(backend, dtype, causal, window):
    dtype = DTYPES[dtype]
    batch, seqlen_q, seqlen_k, heads, heads_k, d = 2, 19, 23, 4, 2, 40
    q = _randn(batch, seqlen_q, heads, d, seed=1, dtype=dtype)
    k, v = (_randn(batch, seqlen_k, heads_k, d, seed=s, dtype=dtype) for s in (2, 3))
    sink = _randn(heads, seed=4) * 2  # logits of the order of the scores, some dominating
    dout = _randn(batch, seqlen_q, heads, d, seed=5, dtype=dtype)
    opts = dict(causal=causal, window_size=window, softmax_scale=0.2)

    def ours(q, k, v, s):
        return fastattn.flash_attn_func(q, k, v, learnable_sink=s, backend=backend, **opts)

    def oracle(upcast):
        def fn(q, k, v, s):
            return reference.flash_attn_func(q, k, v, learnable_sink=s, upcast=upcast, **opts)
        return fn

    got = _grads(ours, [q, k, v, sink], dout)
    ref64 = _grads(oracle(True), [q, k, v, sink], dout)
    ref_lowp = _grads(oracle(False), [q, k, v, sink], dout)
    assert got[4].dtype == torch.float32 and got[4].shape == (heads,)
    _compare(got, ref64, ref_lowp, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_see_no_key(backend):
    """A row that sees no key gives 0 and the LSE of the sink alone (its softmax is all sink)."""
    q = _randn(1, 6, 2, 16, seed=11)
    k, v = (_randn(1, 4, 2, 16, seed=s) for s in (12, 13))
    sink = torch.tensor([0.5, -1.5])
    # Bottom-right causal with seqlen_q > seqlen_k: the first two query rows see no key.
    out, lse, _ = fastattn.flash_attn_func(q, k, v, causal=True, learnable_sink=sink, return_attn_probs=True,
                                           backend=backend)
    assert torch.equal(out[:, :2], torch.zeros_like(out[:, :2]))
    assert torch.equal(lse[0, :, :2], sink[:, None].expand(2, 2))
    ref_out, ref_lse, _ = reference.flash_attn_func(q.double(), k.double(), v.double(), causal=True,
                                                    learnable_sink=sink.double(), return_attn_probs=True)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_with_sink(backend):
    lengths = [5, 17, 1]
    cu = torch.tensor([0, 5, 22, 23], dtype=torch.int32)
    q = _randn(23, 4, 32, seed=21)
    k, v = (_randn(23, 1, 32, seed=s) for s in (22, 23))
    sink = _randn(4, seed=24)
    dout = _randn(23, 4, 32, seed=25)
    opts = dict(causal=True)

    def ours(q, k, v, s):
        return fastattn.flash_attn_varlen_func(q, k, v, cu, cu, 17, 17, learnable_sink=s, backend=backend, **opts)

    def oracle(q, k, v, s):
        return reference.flash_attn_varlen_func(q, k, v, cu, cu, 17, 17, learnable_sink=s, upcast=True,
                                                softmax_scale=32 ** -0.5, **opts)

    got = _grads(ours, [q, k, v, sink], dout)
    ref64 = _grads(oracle, [q, k, v, sink], dout)
    _compare(got, ref64, ref64, torch.float32)
    # Each sequence equals its own call.
    for s, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone = fastattn.flash_attn_func(q[None, a:b], k[None, a:b], v[None, a:b], causal=True, learnable_sink=sink,
                                         backend=backend)
        torch.testing.assert_close(got[0][a:b], alone[0], rtol=1e-5, atol=1e-6)
    assert sum(lengths) == 23


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decoding_with_sink(backend, dtype):
    dtype = DTYPES[dtype]
    q = _randn(3, 1, 8, 64, seed=31, dtype=dtype)
    k_cache, v_cache = (_randn(3, 80, 2, 64, seed=s, dtype=dtype) for s in (32, 33))
    k_new, v_new = (_randn(3, 1, 2, 64, seed=s, dtype=dtype) for s in (34, 35))
    lens = torch.tensor([0, 41, 78], dtype=torch.int32)
    sink = _randn(8, seed=36)
    opts = dict(cache_seqlens=lens, causal=True, window_size=(30, 0), return_softmax_lse=True)
    results = [reference.flash_attn_with_kvcache(
        q.to(ct), k_cache.to(ct).clone(), v_cache.to(ct).clone(), k_new.to(ct), v_new.to(ct),
        learnable_sink=sink, upcast=ct == torch.float64, **opts) for ct in (torch.float64, dtype)]
    out, lse = fastattn.flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k_new, v_new,
                                                learnable_sink=sink, backend=backend, **opts)
    _assert_close("out", out, results[0][0], results[1][0], "out", dtype)
    _assert_close("lse", lse, results[0][1], results[1][1].float(), "lse", dtype)


def test_sink_under_torch_compile():
    q = _randn(2, 13, 4, 16, seed=41)
    k, v = (_randn(2, 13, 2, 16, seed=s) for s in (42, 43))
    sink = _randn(4, seed=44)
    dout = _randn(2, 13, 4, 16, seed=45)

    def fn(q, k, v, s):
        return fastattn.flash_attn_func(q, k, v, causal=True, learnable_sink=s)

    torch._dynamo.reset()
    got = _grads(torch.compile(fn, fullgraph=True), [q, k, v, sink], dout)
    for g, e in zip(got, _grads(fn, [q, k, v, sink], dout)):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sink, error", [
    (torch.zeros(3), ValueError), (torch.zeros(4, dtype=torch.int32), TypeError), (torch.zeros(2, 2), ValueError),
], ids=["wrong_heads", "integer", "two_dims"])
def test_bad_sink(sink, error):
    q = _randn(1, 5, 4, 16, seed=51)
    k = v = _randn(1, 5, 4, 16, seed=52)
    with pytest.raises(error, match="learnable_sink"):
        fastattn.flash_attn_func(q, k, v, learnable_sink=sink)
