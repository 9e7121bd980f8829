"""The public API: names, signatures, docstrings, torch
equivalence on CPU, the custom ops (opcheck) and torch.compile."""
import inspect
import math
from dataclasses import astuple

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastattn
from fastattn import reference
from fastattn.ops.attention_args import AttentionArgs

_ = inspect.Parameter.empty
FLASH_OPTIONS = [("dropout_p", 0.0), ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
                 ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False), ("return_attn_probs", False)]

# name -> the positional-or-keyword parameters (name, default) in the documented order
SIGNATURES = {
    "scaled_dot_product_attention": [("query", _), ("key", _), ("value", _), ("attn_mask", None), ("dropout_p", 0.0),
                                     ("is_causal", False), ("scale", None), ("enable_gqa", False)],
    "flash_attn_func": [("q", _), ("k", _), ("v", _), *FLASH_OPTIONS],
    "flash_attn_varlen_func": [("q", _), ("k", _), ("v", _), ("cu_seqlens_q", _), ("cu_seqlens_k", _),
                               ("max_seqlen_q", _), ("max_seqlen_k", _), *FLASH_OPTIONS],
    # flash-attn 2.x's order, so that positional callers land on the same parameters.
    "flash_attn_with_kvcache": [("q", _), ("k_cache", _), ("v_cache", _), ("k", None), ("v", None),
                                ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None),
                                ("cache_batch_idx", None), ("cache_leftpad", None), ("block_table", None),
                                ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
                                ("softcap", 0.0), ("rotary_interleaved", True), ("alibi_slopes", None),
                                ("num_splits", 0), ("return_softmax_lse", False)],
    "scaled_masked_softmax": [("scores", _), ("mask", None), ("scale", 1.0), ("causal", False)],
    "swiglu": [("gate", _), ("up", _)],
    "geglu": [("gate", _), ("up", _), ("approximate", "none")],
    "bias_gelu": [("x", _), ("bias", _), ("approximate", "none")],
    "feed_forward": [("x", _), ("w_gate_up", _), ("w_down", _), ("activation", "swiglu")],
}


@pytest.mark.parametrize("name", list(SIGNATURES), ids=list(SIGNATURES))
def test_signature_and_docstring(name):
    fn = getattr(fastattn, name)
    assert name in fastattn.__all__
    params = inspect.signature(fn).parameters.values()
    positional = [(p.name, p.default) for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == SIGNATURES[name]
    backend = inspect.signature(fn).parameters["backend"]
    assert backend.kind == backend.KEYWORD_ONLY and backend.default is None
    doc = inspect.getdoc(fn)
    assert doc and len(doc) > 200, f"{name} needs a docstring with shapes and semantics"


def test_backend_context_manager_and_reference_exported():
    assert list(inspect.signature(fastattn.backend).parameters) == ["name"]
    assert inspect.getdoc(fastattn.backend)
    assert fastattn.reference is reference
    assert callable(fastattn.available_backends)


# ----------------------------------------------------------------------------- SDPA equals torch on CPU


def _rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _torch_math(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


def test_sdpa_fallback_3d_inputs():
    gen = torch.Generator().manual_seed(1)
    q, k, v = _rand(gen, 3, 5, 8), _rand(gen, 3, 7, 8), _rand(gen, 3, 7, 8)
    mask = torch.rand(5, 7, generator=gen) > 0.3
    torch.testing.assert_close(fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-6)


def test_sdpa_fallback_float64():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (_rand(gen, 2, 3, 6, 8, dtype=torch.float64) for _ in range(3))
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _torch_math(q, k, v, is_causal=True), rtol=1e-12, atol=1e-12)
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, _torch_math(q, k, v, is_causal=True), rtol=1e-12, atol=1e-12)


SDPA_4D = ["plain", "bool_mask", "float_mask", "causal", "gqa_scale"]


@pytest.mark.parametrize("backend", [None, "reference"], ids=["auto", "reference"])
@pytest.mark.parametrize("case", SDPA_4D, ids=SDPA_4D)
def test_sdpa_4d_matches_torch(case, backend):
    gen = torch.Generator().manual_seed(3 + SDPA_4D.index(case))
    B, H, L, S, D = 2, 4, 9, 11, 16
    q, k, v = _rand(gen, B, H, L, D), _rand(gen, B, H, S, D), _rand(gen, B, H, S, D)
    kw = {}
    if case == "bool_mask":
        kw["attn_mask"] = torch.rand(B, 1, L, S, generator=gen) > 0.3
    elif case == "float_mask":
        kw["attn_mask"] = _rand(gen, L, S)
    elif case == "causal":
        kw["is_causal"] = True
    elif case == "gqa_scale":
        k, v = k[:, :2].contiguous(), v[:, :2].contiguous()
        kw.update(enable_gqa=True, scale=0.2)
    out = fastattn.scaled_dot_product_attention(q, k, v, backend=backend, **kw)
    ref64 = _torch_math(q.double(), k.double(), v.double(),
                        **{n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
                           for n, t in kw.items()})
    assert out.dtype == torch.float32 and out.shape == (B, H, L, D)
    torch.testing.assert_close(out.double(), ref64, rtol=1e-5, atol=1e-6)


def test_flash_attn_func_return_attn_probs():
    gen = torch.Generator().manual_seed(10)
    B, Lq, Lk, H, Hk, D = 2, 6, 9, 4, 2, 16
    q, k, v = _rand(gen, B, Lq, H, D), _rand(gen, B, Lk, Hk, D), _rand(gen, B, Lk, Hk, D)
    result = fastattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert isinstance(result, tuple) and len(result) == 3
    out, lse, s_dmask = result
    assert out.shape == (B, Lq, H, D) and out.dtype == torch.float32
    assert lse.shape == (B, H, Lq) and lse.dtype == torch.float32
    assert s_dmask is None
    ref_out, ref_lse, _ = reference.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, upcast=True)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-6)
    plain = fastattn.flash_attn_func(q, k, v, causal=True)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, out, rtol=0, atol=0)


def test_varlen_return_attn_probs_lse_shape():
    gen = torch.Generator().manual_seed(11)
    q, k, v = _rand(gen, 7, 4, 8), _rand(gen, 9, 2, 8), _rand(gen, 9, 2, 8)
    cu_q, cu_k = torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0, 5, 9], dtype=torch.int32)
    out, lse, s_dmask = fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5, causal=True,
                                                        return_attn_probs=True)
    assert out.shape == (7, 4, 8) and lse.shape == (4, 7) and s_dmask is None
    ref_out, ref_lse, _ = reference.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5, causal=True,
                                                           return_attn_probs=True, upcast=True)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- custom ops


def _attention_inputs(seed, requires_grad):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _rand(gen, 2, 4, 5, 8), _rand(gen, 2, 2, 6, 8), _rand(gen, 2, 2, 6, 8)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def _opcheck(op, args):
    # every check, test_aot_dispatch_dynamic included: the fake implementations must agree with the real ones
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("variant", ["dense_causal", "float_mask", "varlen_alibi"], ids=lambda s: s)
def test_opcheck_attention_fwd(variant):
    q, k, v = _attention_inputs(20, requires_grad=True)
    mask = alibi = cu_q = cu_k = None
    args = AttentionArgs(scale=0.35, causal=variant == "dense_causal", max_seqlen_q=5, max_seqlen_k=6)
    if variant == "float_mask":
        mask = _rand(torch.Generator().manual_seed(21), 2, 4, 5, 6)
    elif variant == "varlen_alibi":
        q, k, v = (t.detach()[:1].clone().requires_grad_(True) for t in (q, k, v))
        cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 4, 6], dtype=torch.int32)
        alibi = torch.rand(2, 4, generator=torch.Generator().manual_seed(22))
        args = AttentionArgs(scale=0.35, causal=True, bottom_right=True, window_left=2, max_seqlen_q=3,
                             max_seqlen_k=4)
    _opcheck(torch.ops.fastattn.attention_fwd.default,
             (q, k, v, mask, alibi, cu_q, cu_k, *astuple(args), "reference"))


def test_opcheck_attention_kvcache():
    gen = torch.Generator().manual_seed(25)
    q = _rand(gen, 2, 1, 4, 8)
    k_cache, v_cache = _rand(gen, 2, 8, 2, 8), _rand(gen, 2, 8, 2, 8)
    k_new, v_new = _rand(gen, 2, 1, 2, 8), _rand(gen, 2, 1, 2, 8)
    lens = torch.tensor([2, 5], dtype=torch.int32)
    args = AttentionArgs(scale=0.35, causal=True, bottom_right=True)
    _opcheck(torch.ops.fastattn.attention_kvcache.default,
             (q, k_cache, v_cache, k_new, v_new, lens, None, *astuple(args), "reference"))


def test_opcheck_softmax_fwd():
    gen = torch.Generator().manual_seed(26)
    scores = _rand(gen, 2, 3, 5, 6).requires_grad_(True)
    mask = torch.rand(5, 6, generator=gen) > 0.7
    _opcheck(torch.ops.fastattn.scaled_masked_softmax_fwd.default, (scores, mask, 0.5, True, "reference"))


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"], ids=lambda s: s)
def test_opcheck_gated_act_fwd(activation):
    gen = torch.Generator().manual_seed(27)
    gate, up = _rand(gen, 3, 16).requires_grad_(True), _rand(gen, 3, 16).requires_grad_(True)
    _opcheck(torch.ops.fastattn.gated_act_fwd.default, (gate, up, activation, "reference"))


def test_opcheck_bias_gelu_fwd():
    gen = torch.Generator().manual_seed(28)
    x, bias = _rand(gen, 3, 16).requires_grad_(True), _rand(gen, 16).requires_grad_(True)
    _opcheck(torch.ops.fastattn.bias_gelu_fwd.default, (x, bias, "tanh", "reference"))


def test_opcheck_feed_forward_fwd():
    gen = torch.Generator().manual_seed(29)
    x = _rand(gen, 3, 12).requires_grad_(True)
    w_gate, w_up = _rand(gen, 20, 12).requires_grad_(True), _rand(gen, 20, 12).requires_grad_(True)
    w_down = _rand(gen, 10, 20).requires_grad_(True)
    for residuals in ("hidden", "gate_up"):
        _opcheck(torch.ops.fastattn.feed_forward_fwd.default, (x, w_gate, w_up, w_down, "swiglu", residuals, "reference"))


def _bwd_case(name):
    """(op, args) for one backward core op on the reference backend."""
    gen = torch.Generator().manual_seed(40)
    if name == "attention_bwd":
        q, k, v = _attention_inputs(23, requires_grad=False)
        extra = (None, None, None, None, *astuple(AttentionArgs(scale=0.35, causal=True)), "reference")
        out, lse = torch.ops.fastattn.attention_fwd(q, k, v, *extra)
        return torch.ops.fastattn.attention_bwd.default, (_rand(gen, *out.shape), q, k, v, out, lse, *extra)
    if name == "scaled_masked_softmax_bwd":
        probs = torch.softmax(_rand(gen, 2, 3, 5, 6), -1)
        return torch.ops.fastattn.scaled_masked_softmax_bwd.default, (_rand(gen, 2, 3, 5, 6), probs, 0.5, "reference")
    if name == "gated_act_bwd":
        return torch.ops.fastattn.gated_act_bwd.default, (*(_rand(gen, 3, 16) for _ in range(3)), "geglu", "reference")
    if name == "bias_gelu_bwd":
        return torch.ops.fastattn.bias_gelu_bwd.default, (_rand(gen, 3, 16), _rand(gen, 3, 16), _rand(gen, 16), "none",
                                                          "reference")
    x, w_gate, w_up, w_down = _rand(gen, 3, 12), _rand(gen, 20, 12), _rand(gen, 20, 12), _rand(gen, 10, 20)
    _, gate, up = torch.ops.fastattn.feed_forward_fwd(x, w_gate, w_up, w_down, "swiglu", "gate_up", "reference")
    return torch.ops.fastattn.feed_forward_bwd.default, (_rand(gen, 3, 10), x, w_gate, w_up, w_down, gate, up, "swiglu",
                                                         "gate_up", "reference")


BWD_OPS = ["attention_bwd", "scaled_masked_softmax_bwd", "gated_act_bwd", "bias_gelu_bwd", "feed_forward_bwd"]


@pytest.mark.parametrize("name", BWD_OPS, ids=BWD_OPS)
def test_opcheck_backward_ops(name):
    _opcheck(*_bwd_case(name))


def test_reference_backward_under_dispatch_mode():
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(32)
    gate, up = _rand(gen, 4, 16).requires_grad_(True), _rand(gen, 4, 16)
    with FlopCounterMode(display=False):
        fastattn.swiglu(gate, up, backend="reference").sum().backward()
    sig = torch.sigmoid(gate.double())
    torch.testing.assert_close(gate.grad.double(), sig * (1 + gate.double() * (1 - sig)) * up.double(),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- torch.compile


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def block(q, k, v, gate, up):
        attn = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn, fastattn.swiglu(gate, up)

    gen = torch.Generator().manual_seed(30)
    q, k, v = (_rand(gen, 1, 2, 7, 16) for _ in range(3))
    gate, up = _rand(gen, 7, 32), _rand(gen, 7, 32)
    compiled = torch.compile(block, fullgraph=True)
    got_attn, got_act = compiled(q, k, v, gate, up)
    eager_attn, eager_act = block(q, k, v, gate, up)
    torch.testing.assert_close(got_attn, eager_attn, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_act, eager_act, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_attn.double(), _torch_math(q.double(), k.double(), v.double(), is_causal=True),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_act.double(), F.silu(gate.double()) * up.double(), rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_backward():
    torch._dynamo.reset()

    def loss(q, k, v):
        return fastattn.flash_attn_func(q, k, v, causal=True).square().sum()

    gen = torch.Generator().manual_seed(31)
    inputs = [_rand(gen, 1, 5, 2, 8).requires_grad_(True) for _ in range(3)]
    compiled = torch.compile(loss, fullgraph=True)
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    expected = torch.autograd.grad(loss(*inputs), inputs)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    scale = 1.0 / math.sqrt(8)
    ref = [t.detach().double().requires_grad_(True) for t in inputs]
    ref_loss = reference.flash_attn_func(*ref, softmax_scale=scale, causal=True).square().sum()
    for g, r in zip(grads, torch.autograd.grad(ref_loss, ref)):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)
