"""torch.compile and torch.export as users call them: the default compiler (inductor), the
default fastattn backend (``auto``: the native CPU kernels here), ``fullgraph=True`` (any
graph break is an error), dynamic shapes without recompiling, and ``torch.export``.

Every compiled result is compared with the eager call (the same kernels: tight) and with
the float64 reference (the math: fp32 tolerance)."""
import copy
import math

import pytest
import torch

import fastattn
import fastattn.nn
from fastattn import reference

RTOL, ATOL = 1e-5, 2e-5  # fp32 kernels against the float64 reference


@pytest.fixture(autouse=True)
def native_feed_forward_in_eager(monkeypatch):
    """Eager calls stay on the kernels the compiled graph runs, which these tests compare tightly:
    below the measured size floor, eager ``auto`` runs torch's own ops for feed_forward and
    bias_gelu (a traced call keeps the custom op), which tests/test_cpu_ffn.py covers."""
    from fastattn.backends.cpu import ffn_crossover as cpu_ffn_crossover

    monkeypatch.setattr(cpu_ffn_crossover, "prefer_torch", lambda *args: False)


def _randn(*shape, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).requires_grad_(requires_grad)


def _double(tensors):
    return [t.detach().double().requires_grad_(t.requires_grad)
            if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]


# Each case: (fastattn call, float64 oracle with the same signature, input factory for a
# sequence length L, whether it has a backward).
def _sdpa_inputs(L, seed=0):
    return [_randn(2, 4, L, 16, seed=seed + i, requires_grad=True) for i in range(3)]


def _sdpa_gqa_mask_inputs(L, seed=0):
    q = _randn(2, 4, L, 16, seed=seed, requires_grad=True)
    k, v = (_randn(2, 2, L, 16, seed=seed + i, requires_grad=True) for i in (1, 2))
    mask = _randn(1, 1, L, L, seed=seed + 3) > -1.0
    return [q, k, v, mask]


def _flash_inputs(L, seed=0):
    q = _randn(2, L, 4, 24, seed=seed, requires_grad=True)
    k, v = (_randn(2, L, 2, 24, seed=seed + i, requires_grad=True) for i in (1, 2))
    return [q, k, v]


def _varlen_inputs(L, seed=0):
    lengths = [L // 3, L - L // 3 - 1, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = int(cu[-1])
    q = _randn(total, 4, 16, seed=seed, requires_grad=True)
    k, v = (_randn(total, 2, 16, seed=seed + i, requires_grad=True) for i in (1, 2))
    return [q, k, v, cu, max(lengths)]


def _kvcache_inputs(L, seed=0):
    q = _randn(3, 1, 4, 16, seed=seed)
    k_cache, v_cache = (_randn(3, L + 8, 2, 16, seed=seed + i) for i in (1, 2))
    k_new, v_new = (_randn(3, 1, 2, 16, seed=seed + i) for i in (3, 4))
    lens = torch.tensor([L, L // 2, 1], dtype=torch.int32)
    return [q, k_cache, v_cache, k_new, v_new, lens]


CASES = {
    "sdpa_causal": (
        lambda q, k, v: fastattn.scaled_dot_product_attention(q, k, v, is_causal=True),
        lambda q, k, v: reference.scaled_dot_product_attention(q, k, v, is_causal=True),
        _sdpa_inputs, True),
    "sdpa_gqa_bool_mask": (
        lambda q, k, v, m: fastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
        lambda q, k, v, m: reference.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
        _sdpa_gqa_mask_inputs, True),
    "flash_causal_window_softcap_gqa": (
        lambda q, k, v: fastattn.flash_attn_func(q, k, v, causal=True, window_size=(5, 0), softcap=3.0),
        lambda q, k, v: reference.flash_attn_func(q, k, v, softmax_scale=1 / math.sqrt(24), causal=True,
                                                  window_size=(5, 0), softcap=3.0),
        _flash_inputs, True),
    "flash_varlen_causal": (
        lambda q, k, v, cu, m: fastattn.flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True),
        lambda q, k, v, cu, m: reference.flash_attn_varlen_func(q, k, v, cu, cu, m, m, softmax_scale=0.25,
                                                                causal=True),
        _varlen_inputs, True),
    "softmax_causal_scaled": (
        lambda s: fastattn.scaled_masked_softmax(s, scale=0.7, causal=True),
        lambda s: reference.scaled_masked_softmax(s, scale=0.7, causal=True),
        lambda L, seed=0: [_randn(2, 3, L, L, seed=seed, requires_grad=True)], True),
    "swiglu": (
        fastattn.swiglu, reference.swiglu,
        lambda L, seed=0: [_randn(L, 64, seed=seed + i, requires_grad=True) for i in range(2)], True),
    "geglu_tanh": (
        lambda g, u: fastattn.geglu(g, u, approximate="tanh"),
        lambda g, u: reference.geglu(g, u, approximate="tanh"),
        lambda L, seed=0: [_randn(L, 64, seed=seed + i, requires_grad=True) for i in range(2)], True),
    "bias_gelu": (
        fastattn.bias_gelu, reference.bias_gelu,
        lambda L, seed=0: [_randn(L, 64, seed=seed, requires_grad=True), _randn(64, seed=seed + 1, requires_grad=True)],
        True),
    "feed_forward_swiglu": (
        fastattn.feed_forward, reference.feed_forward,
        lambda L, seed=0: [_randn(L, 32, seed=seed, requires_grad=True),
                           _randn(128, 32, seed=seed + 1, requires_grad=True) * 0.2,
                           _randn(32, 64, seed=seed + 2, requires_grad=True) * 0.2], True),
}


def _kvcache_ref(q, k_cache, v_cache, k_new, v_new, lens):
    return reference.flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k_new, v_new, cache_seqlens=lens,
                                             softmax_scale=0.25, causal=True)


def _kvcache_call(q, k_cache, v_cache, k_new, v_new, lens):
    return fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens, causal=True)


def _leaves(inputs):
    return [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]


def _run(fn, inputs, backward):
    """Output and the gradients of the inputs that require them (for a shared random dout)."""
    out = fn(*inputs)
    if not backward:
        return [out]
    dout = _randn(*out.shape, seed=99)
    grads = torch.autograd.grad(out, [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad], dout)
    return [out, *grads]


def _assert_matches(compiled_fn, eager_fn, oracle, make_inputs, backward, L):
    inputs = make_inputs(L)
    got = _run(compiled_fn, _leaves(inputs), backward)
    eager = _run(eager_fn, _leaves(inputs), backward)
    expected = _run(oracle, _double(_leaves(inputs)), backward)
    assert len(got) == len(eager) == len(expected)
    for g, e, r in zip(got, eager, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.double(), r, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_public_op_compiles_fullgraph_with_defaults(name):
    fn, oracle, make_inputs, backward = CASES[name]
    torch._dynamo.reset()
    _assert_matches(torch.compile(fn, fullgraph=True), fn, oracle, make_inputs, backward, L=19)


@pytest.mark.parametrize("name", ["sdpa_causal", "flash_causal_window_softcap_gqa", "flash_varlen_causal",
                                  "softmax_causal_scaled", "feed_forward_swiglu"],
                         ids=["sdpa", "flash", "varlen", "softmax", "feed_forward"])
def test_dynamic_shapes_one_compile_serves_two_lengths(name):
    fn, oracle, make_inputs, backward = CASES[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    _assert_matches(compiled, fn, oracle, make_inputs, backward, L=19)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second length must reuse the graph
        _assert_matches(compiled, fn, oracle, make_inputs, backward, L=34)


def test_kvcache_compiles_fullgraph_and_appends_in_place():
    torch._dynamo.reset()
    compiled = torch.compile(_kvcache_call, fullgraph=True, dynamic=True)
    for L in (11, 23):  # dynamic: the second cache length reuses the graph
        inputs = _kvcache_inputs(L)
        expected_cache = [t.clone() for t in inputs[1:3]]
        with torch._dynamo.config.patch(error_on_recompile=L != 11):
            got = compiled(*inputs)
        eager = _kvcache_call(*_leaves(_kvcache_inputs(L)))
        oracle = _kvcache_ref(*_double(_kvcache_inputs(L)))
        torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got.double(), oracle, rtol=RTOL, atol=ATOL)
        lens = inputs[5].long()
        for cache, before, new in zip(inputs[1:3], expected_cache, inputs[3:5]):
            before[torch.arange(3), lens] = new[:, 0]
            assert torch.equal(cache, before)  # the new token landed at cache_seqlens[b], nothing else moved


def test_compiled_varlen_still_rejects_bad_cu_seqlens():
    """The value checks moved inside the op, so a compiled call is checked too."""
    fn, _, make_inputs, _ = CASES["flash_varlen_causal"]
    q, k, v, cu, m = make_inputs(19)
    compiled = torch.compile(fn, fullgraph=True)
    compiled(q, k, v, cu, m)
    bad = cu.clone()
    bad[1] = cu[2] + 1  # past the next boundary: a negative length
    with pytest.raises(ValueError, match="cu_seqlens_q must be non-decreasing"):
        compiled(q, k, v, bad, m)


# ------------------------------------------------------------------------------ modules


def _module_cases():
    torch.manual_seed(3)
    mha = fastattn.nn.MultiheadAttention(32, 4, batch_first=True)
    mha_ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    mha_ref.load_state_dict(mha.state_dict())
    causal = fastattn.nn.CausalSelfAttention(32, 4, num_kv_heads=2)
    swiglu = fastattn.nn.SwiGLU(32, 48)
    ff = fastattn.nn.FeedForward(32, 64)
    return {
        "MultiheadAttention": (lambda m: (lambda x: m(x, x, x, need_weights=False)[0]), mha,
                               lambda m: (lambda x: m(x, x, x, need_weights=False)[0]), mha_ref),
        "CausalSelfAttention": (lambda m: m, causal, lambda m: _with_reference_backend(m), causal),
        "SwiGLU": (lambda m: m, swiglu, lambda m: _with_reference_backend(m), swiglu),
        "FeedForward": (lambda m: m, ff, lambda m: _with_reference_backend(m), ff),
    }


def _with_reference_backend(module):
    def run(x):
        with fastattn.backend("reference"):
            return module(x)
    return run


@pytest.mark.parametrize("name", ["MultiheadAttention", "CausalSelfAttention", "SwiGLU", "FeedForward"])
def test_nn_module_compiles_fullgraph_forward_and_backward(name):
    call, module, oracle_call, oracle_module = _module_cases()[name]
    torch._dynamo.reset()
    oracle_module = copy.deepcopy(oracle_module).double()
    x = _randn(2, 17, 32, seed=5)
    results = []
    for fn, mod, xx in ((torch.compile(call(module), fullgraph=True), module, x),
                        (call(module), module, x),
                        (oracle_call(oracle_module), oracle_module, x.double())):
        mod.zero_grad()
        xx = xx.detach().clone().requires_grad_(True)
        out = fn(xx)
        out.backward(_randn(*out.shape, seed=6).to(out.dtype))
        results.append([out, xx.grad] + [p.grad for p in mod.parameters()])
    got, eager, expected = results
    for g, e, r in zip(got, eager, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.double(), r, rtol=RTOL, atol=ATOL)


def test_patched_transformer_encoder_train_step_compiles():
    """fastattn.patch on nn.TransformerEncoder, then one compiled training step: the loss and every
    parameter's gradient equal torch's own encoder in float64."""
    torch.manual_seed(7)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    original = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    oracle = copy.deepcopy(original).double()
    model = copy.deepcopy(original)
    report = fastattn.patch(model)
    assert sum(s.original == "MultiheadAttention" for s in report.swapped) == 2
    x = _randn(2, 13, 32, seed=8)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(13)
    target = _randn(2, 13, 32, seed=9)

    def step(m, x, mask, target):
        return torch.nn.functional.mse_loss(m(x, mask=mask, is_causal=True), target)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(model, x, mask, target)
    loss.backward()
    ref_loss = step(oracle, x.double(), mask.double(), target.double())
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=RTOL, atol=ATOL)
    for (name, p), r in zip(model.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------ torch.export


class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(*inputs)


@pytest.mark.parametrize("name", ["sdpa_causal", "sdpa_gqa_bool_mask", "flash_causal_window_softcap_gqa",
                                  "flash_varlen_causal", "softmax_causal_scaled", "swiglu", "feed_forward_swiglu"])
def test_torch_export(name):
    fn, oracle, make_inputs, _ = CASES[name]
    inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in make_inputs(19)]
    exported = torch.export.export(_Call(fn), tuple(inputs))
    got = exported.module()(*inputs)
    torch.testing.assert_close(got, fn(*inputs), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.double(), oracle(*_double(inputs)), rtol=RTOL, atol=ATOL)
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any(t.startswith("fastattn.") for t in targets), targets  # the fastattn op itself, not a decomposition


def test_torch_export_kvcache():
    inputs = _kvcache_inputs(11)
    exported = torch.export.export(_Call(_kvcache_call), tuple(t.clone() for t in inputs))
    got = exported.module()(*[t.clone() for t in inputs])
    torch.testing.assert_close(got, _kvcache_call(*[t.clone() for t in inputs]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.double(), _kvcache_ref(*_double(inputs)), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------ dropout


@pytest.mark.parametrize("name", ["flash", "sdpa", "CausalSelfAttention"])
def test_dropout_compiles_fullgraph(name):
    """Dropout under torch.compile: masks come from inductor's RNG, as torch's own dropout's do, so
    a compiled call is reproducible per torch.manual_seed; with inductor's eager RNG
    (fallback_random) it equals the eager call, forward and backward, bit for bit."""
    torch.manual_seed(11)
    module = fastattn.nn.CausalSelfAttention(32, 4, num_kv_heads=2, dropout=0.3).train()
    fns = {
        "flash": (lambda q, k, v: fastattn.flash_attn_func(q, k, v, dropout_p=0.3, causal=True),
                  [_randn(2, 19, 4, 16, seed=i, requires_grad=True) for i in range(3)]),
        "sdpa": (lambda q, k, v: fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True),
                 [_randn(2, 4, 19, 16, seed=i, requires_grad=True) for i in range(3)]),
        "CausalSelfAttention": (module, [_randn(2, 19, 32, seed=3, requires_grad=True)]),
    }
    fn, inputs = fns[name]

    def run(f, seed):
        torch.manual_seed(seed)
        leaves = _leaves(inputs)
        out = f(*leaves)
        return [out, *torch.autograd.grad(out, leaves, _randn(*out.shape, seed=4))]

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    first, again, other = run(compiled, 5), run(compiled, 5), run(compiled, 6)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(fn, fullgraph=True)
        got = run(compiled, 7)
    for g, e in zip(got, run(fn, 7)):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ Hugging Face


def _hf_llama(impl):
    pytest.importorskip("transformers")
    import fastattn.integrations.transformers  # noqa: F401  (registers "fastattn")
    from hf_models import make_model

    model = make_model("llama")
    model.set_attn_implementation(impl)
    return model


def test_hf_attn_implementation_adds_no_graph_break():
    from hf_models import batch

    ids, mask = batch()
    counts, logits = {}, {}
    for impl in ("sdpa", "fastattn"):
        model = _hf_llama(impl)
        torch._dynamo.reset()
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(ids, attention_mask=mask)
            logits[impl] = model(ids, attention_mask=mask).logits
        counts[impl] = explained.graph_break_count
        assert explained.graph_count >= 1
    assert counts["fastattn"] == counts["sdpa"] == 0, counts
    keep = mask.bool()
    torch.testing.assert_close(logits["fastattn"][keep], logits["sdpa"][keep], rtol=1e-4, atol=1e-4)


def test_hf_generate_static_cache_compiled_fullgraph():
    """Greedy generate with a static cache and the model's forward compiled with fullgraph=True (any
    graph break would raise): the same tokens as eager SDPA."""
    from hf_models import batch

    ids, mask = batch()
    eager = _hf_llama("sdpa").generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                       cache_implementation="static", pad_token_id=0)
    model = _hf_llama("fastattn")
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                         cache_implementation="static", pad_token_id=0)
    assert torch.equal(got, eager)


# ------------------------------------------------------------------------------ GPU: CUDA graphs

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _cuda(inputs):
    return [t.detach().cuda().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", ["sdpa_causal", "flash_causal_window_softcap_gqa", "flash_varlen_causal",
                                  "softmax_causal_scaled", "swiglu", "feed_forward_swiglu"])
def test_cuda_graph_capture_and_replay(name):
    fn, oracle, make_inputs, _ = CASES[name]
    inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in make_inputs(19)]
    static = _cuda(inputs)
    expected = fn(*static).clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (autotuning, lazy init) outside the capture
        fn(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    fresh = [t.detach() if isinstance(t, torch.Tensor) else t for t in make_inputs(19, seed=20)]
    for dst, src in zip(static, _cuda(fresh)):
        if isinstance(dst, torch.Tensor) and dst.is_floating_point():
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, fn(*static), rtol=1e-6, atol=1e-6)
    assert not torch.equal(out, expected)  # the replay read the new inputs
    torch.testing.assert_close(out.double().cpu(), oracle(*_double(fresh)), rtol=2e-3, atol=2e-3)  # TF32


@pytest.mark.gpu
@needs_gpu
def test_reduce_overhead_mode():
    fn, oracle, make_inputs, _ = CASES["flash_causal_window_softcap_gqa"]
    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for seed in (0, 1, 2):  # cudagraph trees record on the first calls, then replay
        inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in make_inputs(19, seed=seed)]
        got = compiled(*_cuda(inputs)).clone()
        torch.testing.assert_close(got, fn(*_cuda(inputs)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got.double().cpu(), oracle(*_double(inputs)), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("masks", ["key_padding", "key_padding_and_float_attn_mask", "need_weights"])
def test_multihead_attention_with_masks_compiles(masks):
    torch.manual_seed(12)
    mha = fastattn.nn.MultiheadAttention(32, 4, batch_first=True)
    oracle = torch.nn.MultiheadAttention(32, 4, batch_first=True).double()
    oracle.load_state_dict(mha.state_dict())
    x = _randn(2, 9, 32, seed=13)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[0, :3] = True
    kw = dict(key_padding_mask=kpm, need_weights=masks == "need_weights")
    if masks == "key_padding_and_float_attn_mask":
        kw["attn_mask"] = _randn(9, 9, seed=14)

    def call(m, x):
        out, weights = m(x, x, x, **{k: (v.to(x.dtype) if k == "attn_mask" else v) for k, v in kw.items()})
        return (out, weights) if kw["need_weights"] else (out,)

    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(call, fullgraph=True)(mha, x)
        eager = call(mha, x)
        expected = call(oracle, x.double())
    for g, e, r in zip(got, eager, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.double(), r, rtol=RTOL, atol=ATOL)
