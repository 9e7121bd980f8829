"""fastattn.nn.MultiheadAttention against torch.nn.MultiheadAttention, and CausalSelfAttention
against a float64 reference built from fastattn.reference."""
import copy

import pytest
import torch
from torch import nn

import fastattn
from fastattn import reference
from fastattn.nn import CausalSelfAttention, MultiheadAttention

E, H = 24, 4
N, L, S = 3, 7, 9

CONFIGS = {
    "default": dict(),
    "batch_first": dict(batch_first=True),
    "kdim_vdim": dict(kdim=10, vdim=6),
    "no_bias": dict(bias=False, batch_first=True),
    "bias_kv": dict(add_bias_kv=True),
    "zero_attn": dict(add_zero_attn=True, batch_first=True),
    "bias_kv_zero_attn_kdim": dict(add_bias_kv=True, add_zero_attn=True, kdim=10, vdim=6),
}


def _masks(kind: str, gen: torch.Generator, dtype):
    """(forward kwargs) for a mask scenario; bool masks use torch MHA's True = may not attend."""
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -3:] = True
    pad[2, :2] = True
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    if kind == "none":
        return {}
    if kind == "kpm_bool":
        return dict(key_padding_mask=pad)
    if kind == "kpm_float":
        return dict(key_padding_mask=torch.randn(N, S, generator=gen, dtype=dtype) - 5.0 * pad.to(dtype))
    if kind == "mask2d_bool":
        return dict(attn_mask=causal)
    if kind == "mask3d_float":
        return dict(attn_mask=torch.randn(N * H, L, S, generator=gen, dtype=dtype))
    if kind == "mask2d_and_kpm":
        return dict(attn_mask=causal, key_padding_mask=pad)
    if kind == "is_causal":
        return dict(attn_mask=causal, is_causal=True)
    if kind == "is_causal_kpm":
        return dict(attn_mask=causal, key_padding_mask=pad, is_causal=True)
    raise AssertionError(kind)


MASKS = ["none", "kpm_bool", "kpm_float", "mask2d_bool", "mask3d_float", "mask2d_and_kpm", "is_causal", "is_causal_kpm"]


def _pair(config, dtype=torch.float32, seed=0):
    """A torch MHA with random weights (biases included) and a fastattn MHA with its state_dict."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, **config).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)  # torch zero-initialises biases: make every parameter matter
    ours = MultiheadAttention(E, H, **config).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(config, gen, dtype, self_attention=False):
    q = torch.randn(N, L, E, generator=gen, dtype=dtype)
    if self_attention:
        q = torch.randn(N, S, E, generator=gen, dtype=dtype)
        k = v = q
    else:
        k = torch.randn(N, S, config.get("kdim", E), generator=gen, dtype=dtype)
        v = torch.randn(N, S, config.get("vdim", E), generator=gen, dtype=dtype)
    if not config.get("batch_first", False):
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    return q, k, v


@pytest.mark.parametrize("backend", ["auto", "reference"], ids=["auto", "reference"])
@pytest.mark.parametrize("mask", MASKS, ids=MASKS)
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_mha_matches_torch(config, mask, backend):
    """Outputs and gradients (inputs and every parameter) of fastattn's fp32 module against
    torch's module in float64, over the constructor options and mask forms."""
    cfg = CONFIGS[config]
    ref, ours = _pair(cfg)
    ref64 = copy.deepcopy(ref).double()
    gen = torch.Generator().manual_seed(1)
    q, k, v = _inputs(cfg, gen, torch.float32)
    kwargs = _masks(mask, gen, torch.float32)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    with fastattn.backend(backend):
        out, weights = ours(q, k, v, need_weights=False, **kwargs)
    assert weights is None
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    kwargs64 = {n: (m.double() if m.is_floating_point() else m) if torch.is_tensor(m) else m for n, m in kwargs.items()}
    want, _ = ref64(q64, k64, v64, need_weights=False, **kwargs64)
    assert out.shape == want.shape and out.dtype == torch.float32
    scale = want.abs().max().item()
    assert (out.double() - want).abs().max().item() <= 1e-5 * scale + 1e-6
    dout = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, [q, k, v, *ours.parameters()], dout.float())
    grads64 = torch.autograd.grad(want, [q64, k64, v64, *ref64.parameters()], dout)
    for g, g64 in zip(grads, grads64):
        assert (g.double() - g64).abs().max().item() <= 1e-5 * g64.abs().max().item() + 1e-6


@pytest.mark.parametrize("config", ["default", "batch_first"], ids=["seq_first", "batch_first"])
def test_mha_float64_self_attention_is_torch_exact(config):
    """float64 self-attention (the packed in-projection path) agrees with torch to rounding."""
    cfg = CONFIGS[config]
    ref, ours = _pair(cfg, torch.float64)
    gen = torch.Generator().manual_seed(2)
    x, _, _ = _inputs(cfg, gen, torch.float64, self_attention=True)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1, -4:] = True
    with fastattn.backend("reference"):
        out, _ = ours(x, x, x, key_padding_mask=pad, need_weights=False)
    want, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_mha_unbatched_input():
    ref, ours = _pair(dict())
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(n, E, generator=gen) for n in (L, S, S))
    pad = torch.zeros(S, dtype=torch.bool)
    pad[-2:] = True
    mask3d = torch.randn(H, L, S, generator=gen)
    for kwargs in (dict(), dict(key_padding_mask=pad), dict(attn_mask=mask3d)):
        out, _ = ours(q, k, v, need_weights=False, **kwargs)
        want, _ = ref(q, k, v, need_weights=False, **kwargs)
        assert out.shape == (L, E)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def _count_calls(monkeypatch, name="scaled_dot_product_attention"):
    calls = []
    original = getattr(fastattn, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fastattn, name, counting)
    return calls


def test_mha_runs_fastattn_in_eval_no_grad(monkeypatch):
    """torch's module takes its fused fast path here (eval, no grad, batch_first, self-attention);
    fastattn's must still compute through fastattn.scaled_dot_product_attention."""
    ref, ours = _pair(dict(batch_first=True))
    ref.eval(), ours.eval()
    x = torch.randn(N, S, E)
    calls = _count_calls(monkeypatch)
    with torch.no_grad():
        out, _ = ours(x, x, x, need_weights=False)
        want, _ = ref(x, x, x, need_weights=False)
    assert len(calls) == 1
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_mha_need_weights_is_served_by_torch(monkeypatch):
    ref, ours = _pair(dict(batch_first=True))
    gen = torch.Generator().manual_seed(4)
    q, k, v = _inputs(dict(batch_first=True), gen, torch.float32)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -1] = True
    calls = _count_calls(monkeypatch)
    for average in (True, False):
        out, w = ours(q, k, v, key_padding_mask=pad, average_attn_weights=average)  # need_weights defaults to True
        want, want_w = ref(q, k, v, key_padding_mask=pad, average_attn_weights=average)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(w, want_w)
        assert w.shape == ((N, L, S) if average else (N, H, L, S))
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert not calls


def test_mha_dropout_train_mode():
    """Dropout acts only in training mode, is reproducible from torch's seed, and keeps the
    expectation: the mean over many draws approaches the dropout-free output."""
    ref, ours = _pair(dict(batch_first=True, dropout=0.3))
    gen = torch.Generator().manual_seed(5)
    q, k, v = _inputs(dict(batch_first=True), gen, torch.float32)
    ours.eval()
    ref.eval()
    clean, _ = ours(q, k, v, need_weights=False)
    torch.testing.assert_close(clean, ref(q, k, v, need_weights=False)[0], rtol=1e-5, atol=1e-6)
    ours.train()
    with torch.no_grad():
        torch.manual_seed(11)
        a, _ = ours(q, k, v, need_weights=False)
        torch.manual_seed(11)
        b, _ = ours(q, k, v, need_weights=False)
        torch.manual_seed(12)
        c, _ = ours(q, k, v, need_weights=False)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)
        assert not torch.allclose(a, clean)
        torch.manual_seed(13)
        draws = 100
        mean = sum(ours(q, k, v, need_weights=False)[0] for _ in range(draws)) / draws
    # Inverted dropout keeps the expectation: over 100 draws the mean lands within ~6% of the
    # output scale here (seeded), while a missing 1 / (1 - p) rescale would be off by 30%.
    assert (mean - clean).abs().max().item() < 0.15 * clean.abs().max().item()


def test_mha_is_causal_needs_a_mask_as_torch():
    ref, ours = _pair(dict())
    x = torch.randn(L, N, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(x, x, x, need_weights=False, is_causal=True)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ref(x, x, x, need_weights=False, is_causal=True)


def test_mha_state_dict_round_trips_with_torch():
    for cfg in CONFIGS.values():
        ref, _ = _pair(cfg, seed=7)
        ours = MultiheadAttention(E, H, **cfg)
        assert isinstance(ours, nn.MultiheadAttention)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        assert list(ours.state_dict()) == list(ref.state_dict())
        ours.load_state_dict(ref.state_dict())
        back = nn.MultiheadAttention(E, H, **cfg)
        back.load_state_dict(ours.state_dict())
        for (n, a), (_, b) in zip(back.state_dict().items(), ref.state_dict().items()):
            assert torch.equal(a, b), n


# ----------------------------------------------------------------------------- CausalSelfAttention


def _causal_reference(mod: CausalSelfAttention, x, key_padding_mask=None):
    """The module's math in float64 from its parameters, attention by fastattn.reference."""
    x = x.double()
    w = mod.qkv_proj.weight.double()
    b = None if mod.qkv_proj.bias is None else mod.qkv_proj.bias.double()
    hq, hk, d = mod.num_heads, mod.num_kv_heads, mod.head_dim
    qkv = torch.nn.functional.linear(x, w, b)
    q, k, v = qkv.split((hq * d, hk * d, hk * d), dim=-1)
    n, s, _ = x.shape
    q = q.view(n, s, hq, d).transpose(1, 2)
    k = k.view(n, s, hk, d).transpose(1, 2)
    v = v.view(n, s, hk, d).transpose(1, 2)
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    if key_padding_mask is not None:
        mask = mask & ~key_padding_mask[:, None, None, :]
    out = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    out = out.transpose(1, 2).reshape(n, s, -1)
    wo = mod.out_proj.weight.double()
    bo = None if mod.out_proj.bias is None else mod.out_proj.bias.double()
    return torch.nn.functional.linear(out, wo, bo)


@pytest.mark.parametrize("padding", [False, True], ids=["dense", "left_padded"])
@pytest.mark.parametrize("heads,kv_heads,bias", [(4, None, True), (4, 2, True), (6, 1, False)],
                         ids=["mha", "gqa", "mqa_nobias"])
def test_causal_self_attention_matches_reference(heads, kv_heads, bias, padding):
    torch.manual_seed(0)
    mod = CausalSelfAttention(48, heads, num_kv_heads=kv_heads, bias=bias)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(3, 13, 48, requires_grad=True)
    pad = None
    if padding:
        pad = torch.zeros(3, 13, dtype=torch.bool)
        pad[0, :4] = True
        pad[2, :1] = True
    with fastattn.backend("reference"):
        out = mod(x, key_padding_mask=pad)
    want = _causal_reference(mod, x, pad)
    assert out.shape == (3, 13, 48)
    assert (out.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    dout = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, [x, *mod.parameters()], dout.float())
    mod64 = copy.deepcopy(mod).double()
    x64 = x.detach().double().requires_grad_()
    want64 = _causal_reference(mod64, x64, pad)
    grads64 = torch.autograd.grad(want64, [x64, *mod64.parameters()], dout)
    for g, g64 in zip(grads, grads64):
        assert (g.double() - g64).abs().max().item() <= 1e-5 * g64.abs().max().item() + 1e-7


def test_causal_self_attention_is_causal():
    """Changing a later token never changes an earlier position's output."""
    torch.manual_seed(1)
    mod = CausalSelfAttention(32, 4, num_kv_heads=2).eval()
    x = torch.randn(2, 10, 32)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 32)
    with torch.no_grad():
        a, b = mod(x), mod(y)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_causal_self_attention_dropout_and_errors():
    torch.manual_seed(2)
    mod = CausalSelfAttention(32, 4, dropout=0.5)
    x = torch.randn(2, 8, 32)
    mod.eval()
    with torch.no_grad():
        clean = mod(x)
        mod.train()
        torch.manual_seed(3)
        a = mod(x)
        torch.manual_seed(3)
        b = mod(x)
    assert torch.equal(a, b) and not torch.allclose(a, clean)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        CausalSelfAttention(32, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(30, 4)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mod(x, key_padding_mask=torch.zeros(2, 8))


@pytest.mark.parametrize("backend", ["auto", "reference"], ids=["auto", "reference"])
def test_mha_fully_masked_rows(backend):
    """A batch entry whose every key is masked gives what torch gives (zeros) and finite
    gradients, for bool and float (-inf) padding masks."""
    ref, ours = _pair(dict(batch_first=True))
    gen = torch.Generator().manual_seed(6)
    q, k, v = (t.requires_grad_() for t in _inputs(dict(batch_first=True), gen, torch.float32))
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1] = True
    for kpm in (pad, torch.zeros(N, S).masked_fill(pad, float("-inf"))):
        with fastattn.backend(backend):
            out, _ = ours(q, k, v, key_padding_mask=kpm, need_weights=False)
        want, _ = ref(q, k, v, key_padding_mask=kpm, need_weights=False)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        grads = torch.autograd.grad(out.sum(), [q, k, v, *ours.parameters()])
        want_grads = torch.autograd.grad(want.sum(), [q, k, v, *ref.parameters()])
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
