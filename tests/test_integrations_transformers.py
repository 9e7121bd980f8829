"""attn_implementation="fastattn" for Hugging Face transformers.

The attention function is checked directly against fastattn.reference in float64 for every
route it takes (mask/no mask, GQA, softcap, sliding window, decoding, static-cache prefill),
and whole tiny models against the same weights on transformers' own sdpa/eager attention.
"""
import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import fastattn  # noqa: E402
import fastattn.integrations.transformers as fa_hf  # noqa: E402
from fastattn import reference  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import hf_models as hf  # noqa: E402

OPS = ("scaled_dot_product_attention", "flash_attn_func", "flash_attn_with_kvcache", "scaled_masked_softmax",
       "flash_attn_varlen_func")


@pytest.fixture
def calls(monkeypatch):
    """Counts calls of the public fastattn attention ops: {op name: [kwargs of each call]}."""
    log = {name: [] for name in OPS}
    for name in OPS:
        original = getattr(fastattn, name)

        def counting(*args, _original=original, _log=log[name], **kwargs):
            _log.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(fastattn, name, counting)
    return log


def _served(calls):
    return [name for name in OPS if calls[name]]


def test_registered_with_both_interfaces():
    assert ALL_ATTENTION_FUNCTIONS["fastattn"] is fa_hf.attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["fastattn"] is fa_hf.attention_mask
    pad = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    mask = fa_hf.attention_mask(batch_size=2, q_length=4, kv_length=4, attention_mask=pad)
    want = torch.ones(4, 4, dtype=torch.bool).tril() & pad[:, None, None, :]
    assert mask.dtype == torch.bool and torch.equal(mask, want)
    # Plain causal without padding: no mask, the kernel's causal flag does it.
    assert fa_hf.attention_mask(batch_size=2, q_length=4, kv_length=4, attention_mask=torch.ones(2, 4).bool()) is None


# ----------------------------------------------------------------------------- the attention function


class _Layer(nn.Module):
    def __init__(self, is_causal=True):
        super().__init__()
        self.is_causal = is_causal


def _qkv(b=2, hq=4, hk=2, lq=9, lk=9, d=16, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for h, n in ((hq, lq), (hk, lk), (hk, lk)))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def _ref_eager(q, k, v, mask=None, causal=False, scale=None, softcap=0.0, window=None):
    """The eager formula of transformers' Gemma 2 in float64: scale, softcap, additive mask
    (finfo.min where masked), softmax, weighted sum. Returns (B, Lq, Hq, D)."""
    q, k, v = (t.detach().double() for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    lq, lk = q.shape[2], k.shape[2]
    visible = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        visible &= torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    if window is not None:
        i = torch.arange(lq)[:, None] + lk - lq
        visible &= torch.arange(lk)[None, :] > i - window
    if mask is not None:
        visible = visible & mask
    s = s.masked_fill(~visible, torch.finfo(torch.float64).min)
    return (s.softmax(-1) @ v).transpose(1, 2)


def _check(out, want, rtol=1e-5):
    assert out.shape == want.shape
    assert (out.double() - want).abs().max().item() <= rtol * want.abs().max().item()


def _pad_mask(b, lq, lk, pads):
    mask = torch.ones(b, 1, lq, lk, dtype=torch.bool).tril(lk - lq)
    for i, p in enumerate(pads):
        mask[i, ..., :p] = False
    return mask


@pytest.mark.parametrize("backend", ["auto", "reference"], ids=["auto", "reference"])
def test_no_mask_causal_gqa_uses_sdpa(calls, backend):
    q, k, v = _qkv()
    with fastattn.backend(backend):
        out, weights = fa_hf.attention_forward(_Layer(), q, k, v, None, scaling=0.3)
    assert weights is None and _served(calls) == ["scaled_dot_product_attention"]
    assert calls["scaled_dot_product_attention"][0]["enable_gqa"] is True  # no repeated K/V heads
    assert calls["scaled_dot_product_attention"][0]["is_causal"] is True
    _check(out, _ref_eager(q, k, v, causal=True, scale=0.3))
    # Gradients against the float64 reference SDPA.
    dout = torch.randn(out.shape)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = reference.scaled_dot_product_attention(q64, k64, v64, is_causal=True, scale=0.3, enable_gqa=True)
    want_grads = torch.autograd.grad(want.transpose(1, 2), (q64, k64, v64), dout.double())
    for g, w in zip(grads, want_grads):
        _check(g, w)


@pytest.mark.parametrize("float_mask", [False, True], ids=["bool_mask", "float_mask"])
def test_padding_mask_uses_sdpa(calls, float_mask):
    q, k, v = _qkv(seed=1)
    mask = _pad_mask(2, 9, 9, (3, 0))
    given = mask
    if float_mask:
        given = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with fastattn.backend("reference"):
        out, _ = fa_hf.attention_forward(_Layer(), q, k, v, given)
    assert _served(calls) == ["scaled_dot_product_attention"]
    assert calls["scaled_dot_product_attention"][0]["is_causal"] is False
    want = _ref_eager(q, k, v, mask=mask)
    _check(out[1], want[1])
    _check(out[0, 3:], want[0, 3:])  # rows 0-2 of the first sequence see no key (padding)


def test_bidirectional_layer_without_mask():
    q, k, v = _qkv(hq=4, hk=4, seed=2)
    out, _ = fa_hf.attention_forward(_Layer(is_causal=False), q, k, v, None)
    _check(out, _ref_eager(q, k, v))
    out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, is_causal=False)  # the kwarg wins
    _check(out, _ref_eager(q, k, v))


@pytest.mark.parametrize("backend", ["auto", "reference"], ids=["auto", "reference"])
def test_softcap_without_mask_uses_flash(calls, backend):
    q, k, v = _qkv(seed=3)
    q = q * 4  # large scores, so that the cap changes them
    with fastattn.backend(backend):
        out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, softcap=2.0, scaling=0.25)
    assert _served(calls) == ["flash_attn_func"]
    want = _ref_eager(q, k, v, causal=True, scale=0.25, softcap=2.0)
    _check(out, want)
    assert (want - _ref_eager(q, k, v, causal=True, scale=0.25)).abs().max() > 1e-2  # the cap matters
    dout = torch.randn(out.shape)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = reference.flash_attn_func(q64.transpose(1, 2), k64.transpose(1, 2), v64.transpose(1, 2),
                                     softmax_scale=0.25, causal=True, softcap=2.0)
    for g, w in zip(grads, torch.autograd.grad(want, (q64, k64, v64), dout.double())):
        _check(g, w)


def test_softcap_with_mask_uses_fused_softmax(calls):
    q, k, v = _qkv(seed=4)
    q = q * 4
    mask = _pad_mask(2, 9, 9, (2, 0))
    window = torch.arange(9)[None, :] > torch.arange(9)[:, None] - 4  # a sliding-window layer's mask
    mask = mask & window
    with fastattn.backend("reference"):
        out, _ = fa_hf.attention_forward(_Layer(), q, k, v, mask, softcap=2.0, sliding_window=4)
    assert _served(calls) == ["scaled_masked_softmax"]
    # Every row, the fully padded ones included, as the model's eager path computes it.
    _check(out, _ref_eager(q, k, v, mask=mask, softcap=2.0))


def test_sliding_window_without_mask_uses_flash_window(calls):
    q, k, v = _qkv(seed=5, lq=12, lk=12)
    out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, sliding_window=4)
    assert _served(calls) == ["flash_attn_func"]
    assert calls["flash_attn_func"][0]["window_size"] == (3, 0)
    _check(out, _ref_eager(q, k, v, causal=True, window=4))


@pytest.mark.parametrize("softcap", [0.0, 2.0], ids=["plain", "softcap"])
def test_decoding_uses_kvcache_kernel(calls, softcap):
    q, k, v = _qkv(lq=1, lk=13, seed=6, grad=False)
    with torch.no_grad():
        out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, softcap=softcap or None, scaling=0.2)
    assert _served(calls) == ["flash_attn_with_kvcache"]
    _check(out, _ref_eager(q, k, v, scale=0.2, softcap=softcap))
    # With gradients needed the differentiable op serves the same call.
    q, k, v = _qkv(lq=1, lk=13, seed=6)
    out2, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, softcap=softcap or None, scaling=0.2)
    _check(out2, _ref_eager(q, k, v, scale=0.2, softcap=softcap))
    assert "flash_attn_with_kvcache" in _served(calls) and len(_served(calls)) == 2


def test_static_cache_prefill_drops_unused_slots():
    q, k, v = _qkv(lq=5, lk=12, seed=7)
    k.data[:, :, 5:] = 1e4  # unused static-cache slots must not take part
    out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None)
    _check(out, _ref_eager(q, k[:, :, :5], v[:, :, :5], causal=True))


# ----------------------------------------------------------------------------- whole models


def _with_impl(model, impl):
    other = copy.deepcopy(model)
    other.set_attn_implementation(impl)
    assert other.config._attn_implementation == impl
    return other


def test_from_config_and_set_attn_implementation():
    base = hf.make_model("llama")
    built = AutoModelForCausalLM.from_config(base.config, attn_implementation="fastattn")
    assert built.config._attn_implementation == "fastattn"
    built.load_state_dict(base.state_dict())
    built.eval()
    ids, mask = hf.batch()
    with torch.no_grad():
        want = hf.logits(base, ids, mask)
        got = hf.logits(built, ids, mask)
        got2 = hf.logits(_with_impl(base, "fastattn"), ids, mask)
    valid = mask.bool()
    for out in (got, got2):
        assert (out - want)[valid].abs().max() <= 1e-5 * want.abs().max()


def test_padding_is_honoured(calls):
    """The mask function is what makes padding reach the kernel: the first row's valid logits
    must not depend on what sits in its padded positions."""
    model = _with_impl(hf.make_model("qwen2"), "fastattn")
    ids, mask = hf.batch()
    other = ids.clone()
    other[0, :4] = torch.arange(10, 14)
    with torch.no_grad():
        a, b = hf.logits(model, ids, mask), hf.logits(model, other, mask)
    assert any(c.get("attn_mask") is not None for c in calls["scaled_dot_product_attention"])
    torch.testing.assert_close(a[0, 4:], b[0, 4:], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and without the mask the padded tokens would leak in
        c = hf.logits(model, other, None)
    assert not torch.allclose(a[0, 4:], c[0, 4:], atol=1e-3)


def test_mistral_sliding_window_matches_sdpa():
    model = hf.make_model("mistral")  # window 5 < 11 tokens
    ids, mask = hf.batch(seq=11)
    fa = _with_impl(model, "fastattn")
    with torch.no_grad():
        want, got = hf.logits(model, ids, mask), hf.logits(fa, ids, mask)
        full = copy.deepcopy(fa)
        full.config.sliding_window = None
        no_window = hf.logits(full, ids, mask)
    valid = mask.bool()
    assert (got - want)[valid].abs().max() <= 1e-5 * want.abs().max()
    assert (no_window - want)[valid].abs().max() > 1e-3  # the window really shapes the output


@pytest.mark.parametrize("backend", ["auto", "reference"], ids=["auto", "reference"])
def test_gemma2_softcap_and_window_match_eager(backend):
    model = hf.make_model("gemma2").train()
    assert model.config._attn_implementation == "eager"  # transformers' only exact softcap path
    fa = _with_impl(model, "fastattn")
    ids, mask = hf.batch(seq=11)
    cot = torch.randn(*ids.shape, hf.VOCAB)
    outs = []
    for m in (model, fa):
        with fastattn.backend(backend):
            out = hf.logits(m, ids, mask)
        grads = torch.autograd.grad((out * cot).sum(), list(m.parameters()))
        outs.append((out, grads))
    (want, want_grads), (got, grads) = outs
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()  # padded rows included
    top = max(w.norm() for w in want_grads)
    for g, w in zip(grads, want_grads):
        assert (g - w).norm() <= 1e-4 * max(w.norm(), 1e-3 * top)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"], ids=["llama", "gemma2", "gpt2"])
def test_kv_cache_decoding_step_by_step(calls, family):
    """Prefill then decode token by token with a DynamicCache: every step's logits equal the
    original attention's, dense and left-padded, and unpadded steps use the decoding kernel."""
    model = hf.make_model(family, seed=5)
    fa = _with_impl(model, "fastattn")
    ids, mask = hf.batch(6, seq=6, left_pad=(2, 0, 0))
    for m_ids, m_mask in ((ids[1:], None), (ids, mask)):
        caches = [transformers.DynamicCache(config=model.config), transformers.DynamicCache(config=fa.config)]
        step_ids, step_mask = m_ids, m_mask
        for step in range(4):
            outs = []
            for m, cache in zip((model, fa), caches):
                with torch.no_grad():
                    outs.append(m(input_ids=step_ids, attention_mask=step_mask, past_key_values=cache,
                                  use_cache=True).logits[:, -1])
            assert (outs[1] - outs[0]).abs().max() <= 1e-5 * outs[0].abs().max(), step
            step_ids = outs[0].argmax(-1, keepdim=True)
            if step_mask is not None:
                step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
    assert calls["flash_attn_with_kvcache"]


def test_generate_with_static_cache():
    model = hf.make_model("llama", seed=6)
    fa = _with_impl(model, "fastattn")
    ids, mask = hf.batch(7, seq=6, left_pad=(2, 0, 0))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None, cache_implementation="static")
    with torch.no_grad():
        assert torch.equal(fa.generate(ids[1:], **kwargs), model.generate(ids[1:], **kwargs))
        assert torch.equal(fa.generate(ids, attention_mask=mask, **kwargs),
                           model.generate(ids, attention_mask=mask, **kwargs))


# ----------------------------------------------------------------------------- no silent wrong answers


@pytest.mark.parametrize("name", sorted(fa_hf.UNSUPPORTED_KWARGS))
def test_math_changing_kwargs_it_does_not_implement_raise(name):
    q, k, v = _qkv(grad=False)
    with pytest.raises(NotImplementedError, match=rf"'{name}'"):
        fa_hf.attention_forward(_Layer(), q, k, v, None, **{name: torch.zeros(4)})


def test_unknown_kwargs_raise_naming_them_and_what_is_known():
    q, k, v = _qkv(grad=False)
    with pytest.raises(TypeError, match=r"'attention_temperature'.*implements.*scaling.*ignores.*position_ids"):
        fa_hf.attention_forward(_Layer(), q, k, v, None, attention_temperature=2.0)


def test_ignored_and_absent_kwargs_leave_the_result_unchanged():
    """The arguments proven harmless (position ids, cache bookkeeping, ...) and arguments passed as
    ``None`` (transformers' way of saying "absent", e.g. s_aux=None) change nothing."""
    q, k, v = _qkv(seed=8, grad=False)
    extra = dict(position_ids=torch.arange(9)[None].expand(2, -1), cache_position=torch.arange(9), use_cache=True,
                 output_router_logits=False, logits_to_keep=0, encoder_hidden_states=None, s_aux=None,
                 indices=None, attention_temperature=None)
    assert set(extra) - {"attention_temperature"} <= (fa_hf.IGNORED_KWARGS | set(fa_hf.UNSUPPORTED_KWARGS)
                                                      | fa_hf.IMPLEMENTED_KWARGS)
    out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, scaling=0.3, **extra)
    _check(out, _ref_eager(q, k, v, causal=True, scale=0.3))


def _continuous_batching(model, prompts, max_new_tokens=6):
    """Greedy tokens of transformers' continuous batching (paged cache, packed batches, requests
    joining and leaving) for ``prompts``: ``{request id: tokens}``."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    # Small pages and few requests per step, so that sequences span several pages and the
    # scheduler admits requests while others are decoding.
    config = ContinuousBatchingConfig(page_size=16, num_blocks=32, max_batch_tokens=64, max_requests_per_batch=3)
    with torch.no_grad():
        out = model.generate_batch(inputs=prompts, generation_config=gen, continuous_batching_config=config)
    assert model.config._attn_implementation in ("fastattn", "sdpa", "paged|eager")
    return {rid: list(result.generated_tokens) for rid, result in out.items()}


def _prompts(seed, lengths):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, hf.VOCAB, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_continuous_batching_matches_sdpa(calls, family):
    """transformers' continuous batching (generate_batch: paged cache, prefill and decoding
    packed into one row, requests scheduled in and out) on "fastattn" gives the greedy tokens of
    the same model on "sdpa", every attention call going to fastattn's varlen kernel (GQA; Mistral
    with a sliding window shorter than the sequences; Gemma 2 with softcapping and sliding layers,
    which transformers' sdpa does not softcap, so it is compared with "paged|eager")."""
    base = hf.make_model(family, seed=21)
    prompts = _prompts(5, (19, 3, 34, 7, 12))  # more requests than one batch, pages of 16 crossed
    peer = "paged|eager" if family == "gemma2" else "sdpa"
    want = _continuous_batching(_with_impl(base, peer), prompts)
    fast = _with_impl(base, "fastattn")
    got = _continuous_batching(fast, prompts)
    assert fast.config._attn_implementation == "fastattn"  # kept, not switched by transformers
    assert len(got) == len(prompts) and all(len(t) == 6 for t in got.values())
    assert got == want
    assert _served(calls) == ["flash_attn_varlen_func"]
    assert all(c["causal"] for c in calls["flash_attn_varlen_func"])


def _gpt_oss_with_large_sinks(attn_implementation: str, seed: int):
    """A tiny gpt-oss (sliding and full layers, GQA) with random weights and sinks big enough to
    take a real share of each softmax."""
    config = transformers.GptOssConfig(vocab_size=hf.VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                                       num_experts_per_tok=2, sliding_window=4)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.randn_like(layer.self_attn.sinks) * 2)
    return model


def test_continuous_batching_with_sinks_matches_eager(calls):
    """gpt-oss (attention sinks, sliding and full layers) under continuous batching: fastattn's
    varlen kernel with learnable_sink gives paged|eager's greedy tokens."""
    eager = _gpt_oss_with_large_sinks("paged|eager", seed=3)
    prompts = _prompts(6, (9, 21, 4))
    want = _continuous_batching(eager, prompts)
    got = _continuous_batching(_with_impl(eager, "fastattn"), prompts)
    assert got == want
    assert calls["flash_attn_varlen_func"] and all(
        c["learnable_sink"] is not None for c in calls["flash_attn_varlen_func"])


def test_block_table_decoding_is_refused_by_name():
    """transformers' block-table decode path (only enabled for flash-attention 2/3 on CUDA) hands
    the attention function the paged caches and a block table instead of gathered keys: fastattn
    does not serve that form through this integration, and says so by name."""
    q, k, v = _qkv(b=1, lq=2, lk=2, grad=False)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    pages = torch.randn(4, 16, 2, 16)
    with pytest.raises(NotImplementedError, match="block_table"):
        fa_hf.attention_forward(_Layer(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=1,
                                max_length_k=1, block_table=torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="k_cache"):
        fa_hf.attention_forward(_Layer(), q, k, v, None, k_cache=pages, v_cache=pages,
                                block_table=torch.zeros(2, 4, dtype=torch.int32))


@pytest.mark.parametrize("window", [None, 3], ids=["full", "window"])
def test_packed_sequences_attend_within_each_sequence(calls, window):
    """Padding-free packing (cu_seq_lens_q/k, no mask, as transformers' flash path receives it):
    each sequence attends causally to itself only, as if run alone."""
    lens = (4, 7, 2)
    total = sum(lens)
    q, k, v = _qkv(b=1, lq=total, lk=total, seed=9)
    cu = torch.tensor([0, 4, 11, 13], dtype=torch.int32)
    out, _ = fa_hf.attention_forward(_Layer(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7,
                                     max_length_k=7, sliding_window=window, position_ids=torch.tensor([[0]]))
    assert _served(calls) == ["flash_attn_varlen_func"]
    assert out.shape == (1, total, 4, 16)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        want = _ref_eager(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], causal=True, window=window)
        _check(out[:, s:e], want)
    # Without the boundaries the first token of the second sequence would see the first one.
    whole = _ref_eager(q, k, v, causal=True, window=window)
    assert (whole[:, 4] - out[:, 4].double()).abs().max() > 1e-3
    with pytest.raises(ValueError, match="batch must be 1"):
        fa_hf.attention_forward(_Layer(), *_qkv(b=2, lq=13, lk=13, grad=False), None, cu_seq_lens_q=cu,
                                cu_seq_lens_k=cu)


def test_models_whose_attention_bypasses_the_interface_are_refused_at_load():
    """BLOOM computes attention itself and would add fastattn's boolean mask to its scores:
    refused, as transformers refuses "sdpa" for it, at construction and when switching."""
    config = transformers.BloomConfig(vocab_size=hf.VOCAB, hidden_size=32, n_layer=2, n_head=4)
    assert fa_hf.unsupported_reason(transformers.BloomForCausalLM) is not None
    assert fa_hf.unsupported_reason(transformers.LlamaForCausalLM) is None
    with pytest.raises(ValueError, match=r"BloomForCausalLM does not support attn_implementation='fastattn'.*"
                                         r"AttentionInterface.*'eager'"):
        AutoModelForCausalLM.from_config(config, attn_implementation="fastattn")
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):  # the rule transformers applies to sdpa
        AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.set_attn_implementation("fastattn")  # transformers keeps eager here (it warns): never fastattn
    assert model.config._attn_implementation == "eager"
    # A second name registered for fastattn is refused the same way.
    name = fa_hf.register("fastattn_alias")
    with pytest.raises(ValueError, match="fastattn_alias"):
        AutoModelForCausalLM.from_config(config, attn_implementation=name)


def test_gpt_oss_sinks_match_eager():
    """gpt-oss passes its learnable sinks as s_aux: fastattn applies them (learnable_sink), so on a
    padded batch the logits, the greedy tokens and the sinks' gradient equal eager's."""
    eager = _gpt_oss_with_large_sinks("eager", seed=0)
    fast = AutoModelForCausalLM.from_config(eager.config, attn_implementation="fastattn").eval()
    fast.load_state_dict(eager.state_dict())
    ids, mask = hf.batch()
    keep = mask.bool()
    logits = {}
    for name, model in (("eager", eager), ("fastattn", fast)):
        out = model(input_ids=ids, attention_mask=mask).logits
        (out[keep].square().mean()).backward()
        logits[name] = out.detach()
    torch.testing.assert_close(logits["fastattn"][keep], logits["eager"][keep], rtol=1e-4, atol=1e-4)
    for le, lf in zip(eager.model.layers, fast.model.layers):
        torch.testing.assert_close(lf.self_attn.sinks.grad, le.self_attn.sinks.grad, rtol=1e-3, atol=1e-5)
        assert le.self_attn.sinks.grad.abs().sum() > 0
    with torch.no_grad():
        tokens = [m.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
                  for m in (eager, fast)]
    assert torch.equal(tokens[0], tokens[1])
