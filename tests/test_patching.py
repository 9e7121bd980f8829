"""fastattn.patch / unpatch / verify on torch.nn transformers and tiny Hugging Face models.

Every comparison is the patched model against the same model unpatched (its own modules
are the oracle here), in float32 to a relative 1e-4 (measured errors are ~1e-7) and in
float64 to 1e-10, on left-padded batches, in eval and train mode, with the fastattn ops
on the default backend and on the reference backend.
"""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fastattn
from fastattn.nn import MultiheadAttention as FastMHA

# ----------------------------------------------------------------------------- helpers


def _count(monkeypatch, *names):
    """Count calls of the public fastattn ops ``names`` (the patched modules look them up at
    call time), returning {name: [calls]}."""
    calls = {}
    for name in names:
        original = getattr(fastattn, name)
        calls[name] = []

        def counting(*args, _original=original, _log=calls[name], **kwargs):
            _log.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(fastattn, name, counting)
    return calls


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _state(model):
    """Everything a swap may touch: classes, instance dicts' keys, attention implementation."""
    return [(name, type(m), sorted(m.__dict__), getattr(getattr(m, "config", None), "_attn_implementation", None))
            for name, m in model.named_modules()]


def _encoder(norm_first=False, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=not norm_first)


def _src(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 10, 32, generator=gen)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[0, 6:] = True  # right padding: what torch's nested-tensor fast path packs
    pad[2, 9:] = True
    return x, pad


# ----------------------------------------------------------------------------- torch.nn


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_encoder_eval_no_grad_runs_fastattn(monkeypatch, norm_first):
    """In eval/no-grad torch's encoder takes its fused fast path and never calls self_attn;
    after patching every layer's attention really runs through fastattn."""
    ref = _encoder(norm_first).eval()
    model = copy.deepcopy(ref)
    report = fastattn.patch(model)
    layers = {"layers.0", "layers.0.self_attn", "layers.1", "layers.1.self_attn"}
    # The encoder packs padded batches into nested tensors only for post-norm layers.
    assert {s.name for s in report.swapped} == (layers if norm_first else layers | {""})
    x, pad = _src()
    # Control: the unpatched encoder bypasses self_attn.forward here (the trap being tested).
    # Counted on the class, since a hook on the module would itself turn the fast path off.
    seen = []
    torch_forward = nn.MultiheadAttention.forward
    monkeypatch.setattr(nn.MultiheadAttention, "forward", lambda *a, **k: seen.append(1) or torch_forward(*a, **k))
    with torch.no_grad():
        ref(x, src_key_padding_mask=pad)
    assert not seen, "torch's fast path was expected to bypass self_attn in this setting"
    calls = _count(monkeypatch, "scaled_dot_product_attention")
    with torch.no_grad():
        out = model(x, src_key_padding_mask=pad)
        want = ref(x, src_key_padding_mask=pad)
    assert len(calls["scaled_dot_product_attention"]) == 2
    valid = ~pad
    assert _rel(out[valid], want[valid]) < 1e-5  # the fast path leaves padded positions as 0


@pytest.mark.parametrize("backend", ["auto", "reference"], ids=["auto", "reference"])
def test_encoder_train_outputs_and_grads_match(backend):
    ref = _encoder(seed=1).train()
    model = copy.deepcopy(ref)
    fastattn.patch(model)
    x, pad = _src(1)
    causal = nn.Transformer.generate_square_subsequent_mask(10)
    for kwargs in (dict(src_key_padding_mask=pad), dict(mask=causal, is_causal=True), dict()):
        with fastattn.backend(backend):
            out = model(x, **kwargs)
        want = ref(x, **kwargs)
        assert _rel(out, want) < 1e-5
        dout = torch.randn(out.shape)
        grads = torch.autograd.grad(out, list(model.parameters()), dout)
        want_grads = torch.autograd.grad(want, list(ref.parameters()), dout)
        for g, w in zip(grads, want_grads):
            assert _rel(g, w) < 1e-4


def test_transformer_decoder_and_full_model():
    torch.manual_seed(2)
    ref = nn.Transformer(32, 4, 1, 1, 64, dropout=0.0, batch_first=True).eval()
    model = copy.deepcopy(ref)
    report = fastattn.patch(model)
    swapped = {s.name for s in report.swapped}
    assert {"encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.multihead_attn"} <= swapped
    src, tgt = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        out = model(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True)
        want = ref(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True)
    assert _rel(out, want) < 1e-5


def test_root_mha_is_swapped_in_place_and_restored():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    params = [id(p) for p in mha.parameters()]
    sd = {k: v.clone() for k, v in mha.state_dict().items()}
    x = torch.randn(2, 5, 16)
    before = mha(x, x, x, need_weights=False)[0]
    report = fastattn.patch(mha)
    assert type(mha) is FastMHA
    assert report.swapped == [("", "MultiheadAttention", "fastattn.nn.MultiheadAttention")]
    assert [id(p) for p in mha.parameters()] == params
    assert all(torch.equal(v, sd[k]) for k, v in mha.state_dict().items()) and list(mha.state_dict()) == list(sd)
    out = mha(x, x, x, need_weights=False)[0]
    assert _rel(out, before) < 1e-6
    originals = list(mha.parameters())
    out.square().sum().backward()  # gradients land on the original parameter objects
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in originals)
    assert fastattn.unpatch(mha) == [""]
    assert type(mha) is nn.MultiheadAttention and "_fastattn_saved" not in mha.__dict__
    assert torch.equal(mha(x, x, x, need_weights=False)[0], before)


def test_mha_subclass_is_left_with_a_reason():
    class Custom(nn.MultiheadAttention):
        pass

    class CustomLayer(nn.TransformerEncoderLayer):
        pass

    model = nn.Sequential(Custom(16, 2), CustomLayer(16, 2, 32))
    report = fastattn.patch(model)
    assert [s.name for s in report.swapped] == ["1.self_attn"]
    assert [s.name for s in report.skipped] == ["0", "1"]
    assert all("subclasses" in s.reason for s in report.skipped)
    assert type(model[0]) is Custom and type(model[1]) is CustomLayer


def test_encoder_patch_twice_unpatch_and_copies():
    model = _encoder(seed=4).eval()
    x, pad = _src(4)
    fastpath_nested = model.use_nested_tensor
    original = _state(model)
    fastattn.patch(model)
    patched = _state(model)
    second = fastattn.patch(model)
    assert not second.swapped and len(second.skipped) == 5
    assert _state(model) == patched
    assert model.use_nested_tensor is False
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert _state(clone) == patched
        with torch.no_grad():
            assert torch.equal(clone(x, src_key_padding_mask=pad), model(x, src_key_padding_mask=pad))
    assert set(fastattn.unpatch(model)) == {"", "layers.0", "layers.0.self_attn", "layers.1", "layers.1.self_attn"}
    assert _state(model) == original and model.use_nested_tensor is fastpath_nested
    assert fastattn.unpatch(model) == []


# ----------------------------------------------------------------------------- Hugging Face

hf = pytest.importorskip("hf_models")

MLP_OP = {"llama": "swiglu", "mistral": "swiglu", "qwen2": "swiglu", "gemma": "geglu", "gemma2": "geglu",
          "gpt2": "bias_gelu", "gpt_neox": "bias_gelu", "bert": "bias_gelu"}
MLP_TEXT = {"llama": "fastattn.swiglu", "mistral": "fastattn.swiglu", "qwen2": "fastattn.swiglu",
            "gemma": "fastattn.geglu(approximate='tanh')", "gemma2": "fastattn.geglu(approximate='tanh')",
            "gpt2": "fastattn.bias_gelu(approximate='tanh')", "gpt_neox": "fastattn.bias_gelu(approximate='none')",
            "bert": "fastattn.bias_gelu(approximate='none')"}


def _loss_grads(model, ids, mask, cot):
    """Logits and the gradients of sum(logits * cot) over the non-padded positions."""
    out = hf.logits(model, ids, mask)
    loss = (out * cot * mask[..., None]).sum()
    return out, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("backend,mode", [("auto", "eval"), ("reference", "eval"), ("reference", "train")],
                         ids=["auto-eval", "reference-eval", "reference-train"])
@pytest.mark.parametrize("family", hf.FAMILIES, ids=hf.FAMILIES)
def test_hf_patch_matches_original(monkeypatch, family, backend, mode):
    ref = hf.make_model(family)
    getattr(ref, mode)()
    model = copy.deepcopy(ref)
    params = [id(p) for p in model.parameters()]
    report = fastattn.patch(model)
    assert [id(p) for p in model.parameters()] == params  # no new, dropped or concatenated parameter
    assert report.swapped[0].replacement == "attn_implementation='fastattn'"
    mlps = [s for s in report.swapped if s.replacement.startswith("fastattn.")]
    assert len(mlps) == 2 and all(s.replacement.startswith(MLP_TEXT[family]) for s in mlps)
    assert sum("attention function" in s.replacement for s in report.swapped) == 2
    assert not report.skipped
    assert list(model.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))

    ids, mask = hf.batch()
    cot = torch.randn(*ids.shape, hf.VOCAB, generator=torch.Generator().manual_seed(5))
    calls = _count(monkeypatch, MLP_OP[family])
    with fastattn.backend(backend):
        out, grads = _loss_grads(model, ids, mask, cot)
    want, want_grads = _loss_grads(ref, ids, mask, cot)
    assert len(calls[MLP_OP[family]]) == 2  # one fused MLP per layer really ran
    valid = mask.bool()
    assert _rel(out[valid], want[valid]) < 1e-4
    for (name, _), g, w in zip(ref.named_parameters(), grads, want_grads):
        # Relative to the largest gradient: a key bias's exact gradient is 0 (noise on both sides).
        assert (g - w).norm() <= 1e-4 * max(w.norm(), 1e-3 * max(x.norm() for x in want_grads)), name


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"], ids=["llama", "gpt2", "bert"])
def test_hf_patch_float64(family):
    ref = hf.make_model(family, dtype=torch.float64)
    model = copy.deepcopy(ref)
    fastattn.patch(model)
    ids, mask = hf.batch(2)
    with torch.no_grad(), fastattn.backend("reference"):
        out = hf.logits(model, ids, mask)
    want = hf.logits(ref, ids, mask).detach()
    valid = mask.bool()
    assert out.dtype == torch.float64 and _rel(out[valid], want[valid]) < 1e-10


@pytest.mark.parametrize("family", hf.DECODERS, ids=hf.DECODERS)
def test_hf_generate_same_tokens_and_unpatch_restores(family):
    model = hf.make_model(family, seed=3)
    ids, mask = hf.batch(4, seq=7, left_pad=(3, 0, 1))
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        before = hf.logits(model, ids, mask)
        want = model.generate(ids, attention_mask=mask, **kwargs)
        want_one = model.generate(ids[1:2], **kwargs)
    original = _state(model)
    fastattn.patch(model)
    with torch.no_grad():
        got = model.generate(ids, attention_mask=mask, **kwargs)
        got_one = model.generate(ids[1:2], **kwargs)
    assert torch.equal(got, want) and torch.equal(got_one, want_one)
    fastattn.unpatch(model)
    assert _state(model) == original
    with torch.no_grad():
        assert torch.equal(hf.logits(model, ids, mask), before)


def test_hf_patch_options_twice_and_unpatch():
    model = hf.make_model("llama")
    original = _state(model)
    only_ffn = fastattn.patch(model, attention=False)
    assert model.config._attn_implementation == "sdpa" and len(only_ffn.swapped) == 2
    assert fastattn.unpatch(model) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    only_attn = fastattn.patch(model, ffn=False)
    assert model.config._attn_implementation == "fastattn" and len(only_attn.swapped) == 3
    fastattn.unpatch(model)
    assert _state(model) == original
    fastattn.patch(model)
    patched = _state(model)
    again = fastattn.patch(model)
    assert not again.swapped and _state(model) == patched
    assert "already" in str(again)
    text = str(fastattn.patch(hf.make_model("gpt2")))
    for piece in ("module", "original", "replacement", "transformer.h.0.mlp", "GPT2MLP", "attn_implementation"):
        assert piece in text
    clone = pickle.loads(pickle.dumps(model))
    assert _state(clone) == patched
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert _state(torch.load(buf, weights_only=False)) == patched


def test_hf_unknown_family_and_unfusable_activation_are_reported():
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    relu_llama = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24,
                                                  num_hidden_layers=1, num_attention_heads=2, hidden_act="relu"))
    report = fastattn.patch(relu_llama)
    assert [s.name for s in report.skipped] == ["model.layers.0.mlp"]
    assert "ReLU" in report.skipped[0].reason
    phi = t.PhiForCausalLM(t.PhiConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                       num_attention_heads=2))
    report = fastattn.patch(phi)
    assert not report.swapped and "'phi' is not in fastattn's registry" in report.skipped[0].reason


# ----------------------------------------------------------------------------- verify


def test_verify_unpatched_model_leaves_it_as_found():
    model = hf.make_model("llama").train()
    ids, mask = hf.batch()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    state, rng = _state(model), torch.get_rng_state()
    with fastattn.backend("reference"):
        report = fastattn.verify(model, ids, attention_mask=mask)
    assert report.ok and 0 < report.max_rel_err < 1e-5 and 0 < report.grad_max_rel_err < 1e-4
    assert {r.name for r in report.per_module} == {f"model.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn", "mlp")}
    assert _state(model) == state and model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert "OK" in str(report) and "model.layers.0.mlp" in str(report)


def test_verify_patched_model_stays_patched():
    model = _encoder(seed=5).eval()
    fastattn.patch(model)
    state = _state(model)
    x, pad = _src(5)
    report = fastattn.verify(model, x, src_key_padding_mask=pad)
    assert report.ok and report.grad_max_rel_err < 1e-4
    assert [r.name for r in report.per_module] == ["layers.0.self_attn", "layers.1.self_attn"]
    assert _state(model) == state


def test_verify_detects_a_wrong_kernel(monkeypatch):
    """A fused activation off by 1e-3 must fail verification, and be located."""
    model = hf.make_model("qwen2")
    ids, mask = hf.batch()
    real = fastattn.swiglu
    monkeypatch.setattr(fastattn, "swiglu", lambda gate, up: real(gate, up) * 1.001)
    report = fastattn.verify(model, ids, attention_mask=mask)
    assert not report.ok and report.max_rel_err > 1e-4 and report.grad_max_rel_err > 1e-4
    worst = max(report.per_module, key=lambda r: r.max_rel_err)
    assert worst.name.endswith("mlp") and worst.type == "Qwen2MLP"
    assert "MISMATCH" in str(report)


@pytest.mark.parametrize("backend", ["cpu", "triton"], ids=["cpu", "triton"])
def test_hf_patch_on_kernel_backends(backend):
    """The swapped model on each real kernel backend usable here (the native CPU kernels,
    the Triton kernels under the interpreter), against the original attention and MLP."""
    from fastattn import dispatch

    why = fastattn.available_backends("cpu")[backend]
    if why is not None:
        pytest.skip(f"backend {backend!r} unavailable: {why}")
    ops = ("attention_fwd", "attention_bwd", "gated_act_fwd", "gated_act_bwd")
    missing = [op for op in ops if backend not in dispatch.implementations(op)]
    if missing:
        pytest.skip(f"backend {backend!r} has no {', '.join(missing)} yet")
    model = hf.make_model("llama")
    ids, mask = hf.batch(seq=9)
    with fastattn.backend(backend):
        report = fastattn.verify(model, ids, attention_mask=mask)
    assert report.ok, str(report)
