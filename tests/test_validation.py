"""One test per bad-input rule of fastattn.validation, through the public ops.

Each case builds otherwise-valid inputs, breaks one thing, and checks that the public
op raises the documented exception type with a message naming the offending argument.
A tensor on the 'meta' device stands in for "another device" on machines with no GPU.
"""
import pytest
import torch

import fastattn
from fastattn import dispatch

B, L, S, H, HK, D = 2, 5, 7, 4, 2, 8


def _t(*shape, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)


def _sdpa_qkv(**over):
    d = dict(query=_t(B, H, L, D, seed=1), key=_t(B, H, S, D, seed=2), value=_t(B, H, S, D, seed=3))
    d.update(over)
    return d


def _flash_qkv(**over):
    d = dict(q=_t(B, L, H, D, seed=1), k=_t(B, S, HK, D, seed=2), v=_t(B, S, HK, D, seed=3))
    d.update(over)
    return d


LENS_Q, LENS_K = [2, 3], [4, 3]


def _varlen(**over):
    d = dict(q=_t(5, H, D, seed=1), k=_t(7, HK, D, seed=2), v=_t(7, HK, D, seed=3),
             cu_seqlens_q=torch.tensor([0, 2, 5], dtype=torch.int32),
             cu_seqlens_k=torch.tensor([0, 4, 7], dtype=torch.int32), max_seqlen_q=3, max_seqlen_k=4)
    d.update(over)
    return d


def _kvcache(**over):
    d = dict(q=_t(B, 1, H, D, seed=1), k_cache=_t(B, 9, HK, D, seed=2), v_cache=_t(B, 9, HK, D, seed=3),
             k=_t(B, 2, HK, D, seed=4), v=_t(B, 2, HK, D, seed=5),
             cache_seqlens=torch.tensor([3, 6], dtype=torch.int32))
    d.update(over)
    return d


def sdpa(**over):
    kw = _sdpa_qkv(**over)
    return fastattn.scaled_dot_product_attention(**kw)


def flash(**over):
    return fastattn.flash_attn_func(**_flash_qkv(**over))


def varlen(**over):
    return fastattn.flash_attn_varlen_func(**_varlen(**over))


def kvcache(**over):
    return fastattn.flash_attn_with_kvcache(**_kvcache(**over))


def softmax(**over):
    kw = dict(scores=_t(B, H, L, S, seed=6))
    kw.update(over)
    return fastattn.scaled_masked_softmax(**kw)


def swiglu(**over):
    kw = dict(gate=_t(3, 16, seed=7), up=_t(3, 16, seed=8))
    kw.update(over)
    return fastattn.swiglu(**kw)


def geglu(**over):
    kw = dict(gate=_t(3, 16, seed=7), up=_t(3, 16, seed=8))
    kw.update(over)
    return fastattn.geglu(**kw)


def bias_gelu(**over):
    kw = dict(x=_t(3, 16, seed=9), bias=_t(16, seed=10))
    kw.update(over)
    return fastattn.bias_gelu(**kw)


def ffn(**over):
    kw = dict(x=_t(3, 12, seed=11), w_gate_up=_t(40, 12, seed=12), w_down=_t(12, 20, seed=13))
    kw.update(over)
    return fastattn.feed_forward(**kw)


META = "meta"


def _expanded_cache():
    # one (1, 1, HK, D) row broadcast over batch and sequence: every position aliases one memory row
    return _t(1, 1, HK, D, seed=20).expand(B, 9, HK, D)


# (id, call, exception, regex the message must match: it names the argument)
RULES = [
    # ---- rank
    ("sdpa_rank_query_1d", lambda: sdpa(query=_t(D)), ValueError, "query"),
    ("sdpa_rank_key_differs", lambda: sdpa(key=_t(H, S, D)), ValueError, "key"),
    ("flash_rank_q", lambda: flash(q=_t(L, H, D)), ValueError, "q must be 4-D"),
    ("varlen_rank_k", lambda: varlen(k=_t(1, 7, HK, D)), ValueError, "k must be 3-D"),
    ("kvcache_rank_k_cache", lambda: kvcache(k_cache=_t(9, HK, D)), ValueError, "k_cache must be 4-D"),
    ("softmax_rank_scores", lambda: softmax(scores=_t(S)), ValueError, "scores"),
    ("bias_gelu_rank_bias", lambda: bias_gelu(bias=_t(1, 16)), ValueError, "bias must be 1-D"),
    ("ffn_rank_w_down", lambda: ffn(w_down=_t(12, 20, 1)), ValueError, "w_down must be 2-D"),
    # ---- not a tensor / wrong dtype kind
    ("flash_q_not_tensor", lambda: flash(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    ("sdpa_mask_not_tensor", lambda: sdpa(attn_mask=[[True] * S] * L), TypeError, "attn_mask"),
    ("softmax_mask_not_tensor", lambda: softmax(mask=[[True] * S] * L), TypeError, "mask"),
    ("kvcache_k_not_tensor", lambda: kvcache(k=[[0.0]]), TypeError, "k must be a torch.Tensor"),
    ("flash_q_integer", lambda: flash(q=_t(B, L, H, D).to(torch.int32)), TypeError, "q must have dtype"),
    # ---- mismatched batch / heads / head_dim
    ("sdpa_batch", lambda: sdpa(key=_t(B + 1, H, S, D), value=_t(B + 1, H, S, D)), ValueError, "batch"),
    ("flash_batch", lambda: flash(k=_t(B + 1, S, HK, D), v=_t(B + 1, S, HK, D)), ValueError, "k must have a batch"),
    ("kvcache_batch", lambda: kvcache(k_cache=_t(B + 1, 9, HK, D), v_cache=_t(B + 1, 9, HK, D)),
     ValueError, "k_cache must have a batch"),
    ("sdpa_heads_without_gqa", lambda: sdpa(key=_t(B, HK, S, D), value=_t(B, HK, S, D)), ValueError, "enable_gqa"),
    ("sdpa_kv_heads_differ", lambda: sdpa(value=_t(B, HK, S, D)), ValueError, "value"),
    ("flash_v_heads_differ", lambda: flash(v=_t(B, S, 1, D)), ValueError, "v must have a number of heads"),
    ("sdpa_head_dim", lambda: sdpa(key=_t(B, H, S, D + 1)), ValueError, "key must have a head dim"),
    ("flash_head_dim", lambda: flash(k=_t(B, S, HK, D + 1)), ValueError, "k must have a head dim"),
    ("flash_head_dim_zero", lambda: flash(q=_t(B, L, H, 0), k=_t(B, S, HK, 0), v=_t(B, S, HK, 0)),
     ValueError, "q must have a head dim"),
    ("kvcache_head_dim", lambda: kvcache(k_cache=_t(B, 9, HK, D + 1)), ValueError, "k_cache must have a head dim"),
    ("kvcache_v_cache_shape", lambda: kvcache(v_cache=_t(B, 8, HK, D)), ValueError, "v_cache"),
    ("kvcache_k_new_shape", lambda: kvcache(k=_t(B, 2, HK + 1, D)), ValueError, "k must be"),
    ("kvcache_v_new_shape", lambda: kvcache(v=_t(B, 3, HK, D)), ValueError, "v must be"),
    # ---- GQA: query heads a multiple of key/value heads
    ("sdpa_gqa_not_multiple", lambda: sdpa(query=_t(B, 3, L, D), key=_t(B, 2, S, D), value=_t(B, 2, S, D),
                                           enable_gqa=True), ValueError, "query has 3 heads"),
    ("flash_gqa_not_multiple", lambda: flash(q=_t(B, L, 3, D)), ValueError, "q has 3 heads"),
    ("varlen_gqa_not_multiple", lambda: varlen(q=_t(5, 3, D)), ValueError, "q has 3 heads"),
    ("kvcache_gqa_not_multiple", lambda: kvcache(q=_t(B, 1, 3, D)), ValueError, "q has 3 heads"),
    # ---- dtype mix
    ("sdpa_dtype_mix", lambda: sdpa(value=_t(B, H, S, D, dtype=torch.float16)), TypeError, "value"),
    ("flash_dtype_mix", lambda: flash(k=_t(B, S, HK, D, dtype=torch.bfloat16)), TypeError, "k must have the same dtype"),
    ("varlen_dtype_mix", lambda: varlen(v=_t(7, HK, D, dtype=torch.float16)), TypeError, "v must have the same dtype"),
    ("kvcache_dtype_mix", lambda: kvcache(v_cache=_t(B, 9, HK, D, dtype=torch.float16)), TypeError, "v_cache"),
    ("kvcache_new_dtype_mix", lambda: kvcache(k=_t(B, 2, HK, D, dtype=torch.float16)), TypeError, "k must have"),
    ("swiglu_dtype_mix", lambda: swiglu(up=_t(3, 16, dtype=torch.float16)), TypeError, "up"),
    ("bias_gelu_dtype_mix", lambda: bias_gelu(bias=_t(16, dtype=torch.float16)), TypeError, "bias"),
    ("ffn_dtype_mix", lambda: ffn(w_down=_t(12, 20, dtype=torch.float64)), TypeError, "w_down"),
    ("softmax_float_mask_dtype", lambda: softmax(mask=_t(L, S, dtype=torch.float16)), TypeError, "mask"),
    ("sdpa_float_mask_dtype", lambda: sdpa(attn_mask=_t(L, S, dtype=torch.float64)), TypeError, "attn_mask"),
    # ---- device mix
    ("sdpa_device_mix", lambda: sdpa(key=_t(B, H, S, D, device=META)), ValueError, "key"),
    ("sdpa_mask_device_mix", lambda: sdpa(attn_mask=torch.ones(L, S, dtype=torch.bool, device=META)),
     ValueError, "attn_mask"),
    ("flash_device_mix", lambda: flash(v=_t(B, S, HK, D, device=META)), ValueError, "v must be on the same device"),
    ("varlen_cu_seqlens_device", lambda: varlen(cu_seqlens_k=torch.tensor([0, 4, 7], dtype=torch.int32, device=META)),
     ValueError, "cu_seqlens_k"),
    ("kvcache_device_mix", lambda: kvcache(k=_t(B, 2, HK, D, device=META)), ValueError, "k must be on the same device"),
    ("kvcache_seqlens_device", lambda: kvcache(cache_seqlens=torch.tensor([3, 6], dtype=torch.int32, device=META)),
     ValueError, "cache_seqlens"),
    ("flash_alibi_device", lambda: flash(alibi_slopes=torch.rand(H, device=META)), ValueError, "alibi_slopes"),
    ("softmax_device_mix", lambda: softmax(mask=torch.ones(L, S, dtype=torch.bool, device=META)), ValueError, "mask"),
    ("swiglu_device_mix", lambda: swiglu(up=_t(3, 16, device=META)), ValueError, "up"),
    ("bias_gelu_device_mix", lambda: bias_gelu(bias=_t(16, device=META)), ValueError, "bias"),
    ("ffn_device_mix", lambda: ffn(w_down=_t(12, 20, device=META)), ValueError, "w_down"),
    # ---- masks
    ("sdpa_integer_mask", lambda: sdpa(attn_mask=torch.ones(L, S, dtype=torch.int64)), TypeError, "attn_mask"),
    ("softmax_integer_mask", lambda: softmax(mask=torch.ones(L, S, dtype=torch.uint8)), TypeError, "mask"),
    ("sdpa_mask_not_broadcastable", lambda: sdpa(attn_mask=torch.ones(L, S + 1, dtype=torch.bool)),
     ValueError, "attn_mask"),
    ("sdpa_mask_too_many_dims", lambda: sdpa(attn_mask=torch.ones(1, B, H, L, S, dtype=torch.bool)),
     ValueError, "attn_mask"),
    ("softmax_mask_not_broadcastable", lambda: softmax(mask=torch.ones(3, L, S, dtype=torch.bool)),
     ValueError, "mask"),
    ("sdpa_mask_with_is_causal", lambda: sdpa(attn_mask=torch.ones(L, S, dtype=torch.bool), is_causal=True),
     ValueError, "attn_mask"),
    # ---- key/value sequence lengths
    ("sdpa_kv_seqlen", lambda: sdpa(value=_t(B, H, S + 1, D)), ValueError, "value must have a sequence length"),
    ("flash_kv_seqlen", lambda: flash(v=_t(B, S + 1, HK, D)), ValueError, "v must have a sequence length"),
    ("varlen_kv_seqlen", lambda: varlen(v=_t(8, HK, D)), ValueError, "v must have a sequence length"),
    # ---- cu_seqlens / max_seqlen
    ("cu_seqlens_not_integer", lambda: varlen(cu_seqlens_q=torch.tensor([0.0, 2.0, 5.0])), TypeError, "cu_seqlens_q"),
    ("cu_seqlens_not_tensor", lambda: varlen(cu_seqlens_k=[0, 4, 7]), TypeError, "cu_seqlens_k"),
    ("cu_seqlens_not_1d", lambda: varlen(cu_seqlens_q=torch.tensor([[0, 2, 5]], dtype=torch.int32)),
     ValueError, "cu_seqlens_q"),
    ("cu_seqlens_not_monotonic", lambda: varlen(cu_seqlens_k=torch.tensor([0, 5, 4, 7], dtype=torch.int32),
                                                cu_seqlens_q=torch.tensor([0, 2, 3, 5], dtype=torch.int32)),
     ValueError, "cu_seqlens_k must be non-decreasing"),
    ("cu_seqlens_not_from_zero", lambda: varlen(cu_seqlens_q=torch.tensor([1, 2, 5], dtype=torch.int32)),
     ValueError, "cu_seqlens_q must start at 0"),
    ("cu_seqlens_not_to_total", lambda: varlen(cu_seqlens_k=torch.tensor([0, 4, 6], dtype=torch.int32)),
     ValueError, "cu_seqlens_k must end at"),
    ("cu_seqlens_count_mismatch", lambda: varlen(cu_seqlens_q=torch.tensor([0, 1, 2, 5], dtype=torch.int32),
                                                 max_seqlen_q=3), ValueError, "cu_seqlens_q and cu_seqlens_k"),
    ("max_seqlen_too_small", lambda: varlen(max_seqlen_q=2), ValueError, "max_seqlen_q"),
    ("max_seqlen_not_int", lambda: varlen(max_seqlen_k=4.0), TypeError, "max_seqlen_k"),
    # ---- KV cache
    ("kvcache_overflow", lambda: kvcache(cache_seqlens=torch.tensor([3, 8], dtype=torch.int32)),
     ValueError, "cache_seqlens"),
    ("kvcache_negative_seqlens", lambda: kvcache(cache_seqlens=-1, k=None, v=None), ValueError, "cache_seqlens"),
    ("kvcache_seqlens_shape", lambda: kvcache(cache_seqlens=torch.tensor([3, 6, 1], dtype=torch.int32)),
     ValueError, "cache_seqlens"),
    ("kvcache_seqlens_dtype", lambda: kvcache(cache_seqlens=torch.tensor([3.0, 6.0])), TypeError, "cache_seqlens"),
    ("kvcache_append_without_seqlens", lambda: kvcache(cache_seqlens=None), ValueError, "cache_seqlens"),
    ("kvcache_k_without_v", lambda: kvcache(v=None), ValueError, "k and v"),
    ("kvcache_overlapping_cache", lambda: kvcache(k_cache=_expanded_cache()), ValueError, "k_cache"),
    ("kvcache_last_dim_strided", lambda: kvcache(v_cache=_t(B, 9, D, HK).transpose(2, 3)), ValueError, "v_cache"),
    ("kvcache_block_table_batch", lambda: kvcache(block_table=torch.zeros(B + 1, 1, dtype=torch.int32)),
     ValueError, "block_table"),
    # ---- flash options
    ("window_size_below_minus_one", lambda: flash(window_size=(-2, 0)), ValueError, "window_size"),
    ("window_size_not_pair", lambda: flash(window_size=(1, 2, 3)), TypeError, "window_size"),
    ("window_size_not_int", lambda: flash(window_size=(1.5, 0)), TypeError, "window_size"),
    ("varlen_window_size", lambda: varlen(window_size=(0, -3)), ValueError, "window_size"),
    ("kvcache_window_size", lambda: kvcache(window_size=4), TypeError, "window_size"),
    ("softcap_negative", lambda: flash(softcap=-1.0), ValueError, "softcap"),
    ("softcap_nan", lambda: flash(softcap=float("nan")), ValueError, "softcap"),
    ("kvcache_softcap_negative", lambda: kvcache(softcap=-0.5), ValueError, "softcap"),
    ("alibi_shape", lambda: flash(alibi_slopes=torch.rand(H + 1)), ValueError, "alibi_slopes"),
    ("alibi_batch_shape", lambda: flash(alibi_slopes=torch.rand(B + 1, H)), ValueError, "alibi_slopes"),
    ("alibi_dtype", lambda: flash(alibi_slopes=torch.rand(H, dtype=torch.float64)), TypeError, "alibi_slopes"),
    ("varlen_alibi_shape", lambda: varlen(alibi_slopes=torch.rand(3, H)), ValueError, "alibi_slopes"),
    ("kvcache_alibi_shape", lambda: kvcache(alibi_slopes=torch.rand(HK)), ValueError, "alibi_slopes"),
    ("sdpa_dropout_p_one", lambda: sdpa(dropout_p=1.0), ValueError, "dropout_p"),
    ("flash_dropout_p_negative", lambda: flash(dropout_p=-0.1), ValueError, "dropout_p"),
    ("varlen_dropout_p_not_number", lambda: varlen(dropout_p="0.1"), TypeError, "dropout_p"),
    ("sdpa_scale_not_number", lambda: sdpa(scale="2"), TypeError, "scale"),
    ("flash_softmax_scale_not_number", lambda: flash(softmax_scale=torch.tensor(2.0)), TypeError, "softmax_scale"),
    ("flash_causal_not_bool", lambda: flash(causal="yes"), TypeError, "causal"),
    # ---- softmax options
    ("softmax_scale_none", lambda: softmax(scale=None), TypeError, "scale"),
    # ---- feed-forward shapes and names
    ("swiglu_shape_mismatch", lambda: swiglu(up=_t(3, 15)), ValueError, "up must have gate's shape"),
    ("geglu_shape_mismatch", lambda: geglu(gate=_t(4, 16)), ValueError, "up must have gate's shape"),
    ("bias_gelu_length", lambda: bias_gelu(bias=_t(15)), ValueError, "bias must have a length"),
    ("ffn_w_gate_up_odd_rows", lambda: ffn(w_gate_up=_t(41, 12)), ValueError, "w_gate_up"),
    ("ffn_w_gate_up_input_dim", lambda: ffn(w_gate_up=_t(40, 11)), ValueError, "w_gate_up"),
    ("ffn_w_down_hidden", lambda: ffn(w_down=_t(12, 21)), ValueError, "w_down"),
    ("ffn_pair_shapes", lambda: ffn(w_gate_up=(_t(20, 12), _t(21, 12))), ValueError, r"w_gate_up\[1\]"),
    ("ffn_pair_length", lambda: ffn(w_gate_up=(_t(20, 12),) * 3), ValueError, "w_gate_up"),
    ("ffn_activation_name", lambda: ffn(activation="relu"), ValueError, "activation"),
    ("ffn_activation_type", lambda: ffn(activation=None), TypeError, "activation"),
    ("geglu_approximate_name", lambda: geglu(approximate="exact"), ValueError, "approximate"),
    ("bias_gelu_approximate_name", lambda: bias_gelu(approximate="sigmoid"), ValueError, "approximate"),
]


@pytest.mark.parametrize("call,exc,match", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# The valid baseline of every builder above must pass: otherwise a rule test could pass on the wrong error.
BASELINES = {"sdpa": sdpa, "flash": flash, "varlen": varlen, "kvcache": kvcache, "softmax": softmax,
             "swiglu": swiglu, "geglu": geglu, "bias_gelu": bias_gelu, "ffn": ffn}


@pytest.mark.parametrize("build", list(BASELINES.values()), ids=list(BASELINES))
def test_valid_baseline_runs(build):
    out = build()
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()


OPS = BASELINES


@pytest.mark.parametrize("build", list(OPS.values()), ids=list(OPS))
def test_unknown_backend_name(build):
    with pytest.raises(ValueError, match="backend must be one of"):
        build(backend="tpu")
    with pytest.raises(TypeError, match="backend must be a str"):
        build(backend=3)


def _make_cuda_unavailable(monkeypatch):
    # Deterministic whatever this installation built: "cuda" reports a reason on every device.
    dispatch._load_backends()
    for device_type in ("cpu", "cuda"):  # availability is probed once per process and cached
        monkeypatch.setitem(dispatch._REASONS, ("cuda", device_type), "fastattn._cuda was not built")


@pytest.mark.parametrize("build", list(OPS.values()), ids=list(OPS))
def test_unavailable_backend_lists_what_is_available(build, monkeypatch):
    _make_cuda_unavailable(monkeypatch)
    with pytest.raises(ValueError, match="backend='cuda'") as info:
        build(backend="cuda")
    message = str(info.value)
    assert "fastattn._cuda was not built" in message
    assert "reference (ok)" in message


def test_unavailable_backends_of_this_installation():
    """Whatever is really unavailable here is refused with its reason, and the list of backends."""
    missing = {name: why for name, why in fastattn.available_backends("cpu").items() if why is not None}
    if not missing:
        pytest.skip("every backend is available on CPU in this installation")
    for name, why in missing.items():
        with pytest.raises(ValueError, match=f"backend='{name}'") as info:
            flash(backend=name)
        assert why in str(info.value) and "reference (ok)" in str(info.value)


@pytest.mark.parametrize("backend", ["triton", "cuda", "cpu"], ids=["triton", "cuda", "cpu"])
def test_sdpa_explicit_backend_outside_its_domain(backend):
    """3-D inputs are served by torch under auto; an explicit kernel backend refuses them."""
    q = _t(H, L, D)
    with pytest.raises(ValueError, match=f"backend='{backend}'"):
        fastattn.scaled_dot_product_attention(q, _t(H, S, D), _t(H, S, D), backend=backend)


def test_unavailable_backend_from_context_manager(monkeypatch):
    _make_cuda_unavailable(monkeypatch)
    with fastattn.backend("cuda"), pytest.raises(ValueError, match="reference \\(ok\\)"):
        flash()


def test_context_manager_rejects_unknown_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastattn.backend("tpu"):
            pass


def test_checks_run_before_any_kernel(monkeypatch):
    """A bad input never reaches a backend: every backend's implementations are booby-trapped."""
    impls = dispatch.implementations("attention_fwd")

    def boom(*args, **kwargs):
        raise AssertionError("a kernel was launched on bad input")

    for name, impl in impls.items():
        monkeypatch.setitem(dispatch._IMPLS, ("attention_fwd", name), dispatch.Impl("attention_fwd", name, boom))
    with pytest.raises(ValueError, match="v must have a sequence length"):
        flash(v=_t(B, S + 1, HK, D), backend="reference")
    with pytest.raises(AssertionError, match="kernel was launched"):
        flash(backend="reference")


def test_flash_head_dim_over_256_is_rejected_as_flash_attn_does():
    q = torch.randn(1, 3, 2, 257)
    with pytest.raises(ValueError, match=r"q must have a head dim .*\[1, 256\]"):
        fastattn.flash_attn_func(q, q, q)
    with pytest.raises(ValueError, match="q must have a head dim"):
        fastattn.flash_attn_varlen_func(q[0], q[0], q[0], torch.tensor([0, 3], dtype=torch.int32),
                                        torch.tensor([0, 3], dtype=torch.int32), 3, 3)
