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

# torch warns when key_padding_mask and attn_mask differ in type (bool and float): a form the
# tests cover on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")

CONFIGS = {
    "default": dict(),
    "batch_first": dict(batch_first=True),
    "kdim_vdim": dict(kdim=10, vdim=6),
    "no_bias": dict(bias=False, batch_first=True),
    "bias_kv": dict(add_bias_kv=True),
    "zero_attn": dict(add_zero_attn=True, batch_first=True),
    "bias_kv_zero_attn_kdim": dict(add_bias_kv=True, add_zero_attn=True, kdim=10, vdim=6),
}


def _masks(kind: str, gen: torch.Generator, dtype, pad=None):
    """(forward kwargs) for a mask scenario; bool masks use torch MHA's True = may not attend.
    The default padding hides every key a causal first query sees in batch entry 2 (a fully
    masked row); pass ``pad=_visible_pad()`` to keep one visible key in every row."""
    if pad is None:
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
    if kind == "mask2d_float":
        return dict(attn_mask=torch.randn(L, S, generator=gen, dtype=dtype).masked_fill(causal, float("-inf")))
    if kind == "mask3d_float":
        return dict(attn_mask=torch.randn(N * H, L, S, generator=gen, dtype=dtype))
    if kind == "mask3d_bool":
        hidden = torch.rand(N * H, L, S, generator=gen) < 0.4
        hidden[:, :, 0] = False  # a visible key in every row
        return dict(attn_mask=hidden)
    if kind == "mask2d_and_kpm":
        return dict(attn_mask=causal, key_padding_mask=pad)
    if kind == "mask2d_bool_kpm_float":  # mixed: both become additive, as torch merges them
        kpm = torch.randn(N, S, generator=gen, dtype=dtype) - 5.0 * pad.to(dtype)
        return dict(attn_mask=causal, key_padding_mask=kpm)
    if kind == "is_causal":
        return dict(attn_mask=causal, is_causal=True)
    if kind == "is_causal_kpm":
        return dict(attn_mask=causal, key_padding_mask=pad, is_causal=True)
    raise AssertionError(kind)


MASKS = ["none", "kpm_bool", "kpm_float", "mask2d_bool", "mask2d_float", "mask3d_float", "mask3d_bool",
         "mask2d_and_kpm", "mask2d_bool_kpm_float", "is_causal", "is_causal_kpm"]


def _visible_pad():
    """Padding that leaves every query (causal ones included) at least one key: torch's
    need_weights=True path gives NaN for a fully masked row, fastattn 0 (tested separately)."""
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -3:] = True
    pad[2, 3:5] = True
    return pad


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
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(x, x, x, need_weights=True, is_causal=True)


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


# ----------------------------------------------------------------------------- need_weights=True


def _to64(kwargs):
    return {n: (m.double() if m.is_floating_point() else m) if torch.is_tensor(m) else m for n, m in kwargs.items()}


def _grads(outputs, cotangents, inputs):
    """Gradients of ``outputs`` against ``cotangents``; zeros for inputs they do not reach."""
    return torch.autograd.grad(outputs, inputs, cotangents, retain_graph=True, materialize_grads=True)


def _assert_fp32_close(got, want, what):
    """fp32 against the float64 torch module: 1e-5 of the reference's scale."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(got).any(), f"{what}: NaN"
    err = (got.double() - want).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item() + 1e-7, f"{what}: max error {err:.3g}"


def _run_weights(ours, ref64, q, k, v, kwargs, average, gen):
    """Outputs, weights and the gradients of each (with respect to q, k, v and every
    parameter) of fastattn's module and of torch's float64 module on the same inputs."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, w = ours(q, k, v, average_attn_weights=average, **kwargs)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64, w64 = ref64(q64, k64, v64, average_attn_weights=average, **_to64(kwargs))
    dout = torch.randn(out64.shape, generator=gen, dtype=torch.float64)
    dw = torch.randn(w64.shape, generator=gen, dtype=torch.float64)
    ins, ins64 = [q, k, v, *ours.parameters()], [q64, k64, v64, *ref64.parameters()]
    got = dict(out=out, weights=w, d_via_out=_grads(out, dout.to(out.dtype), ins),
               d_via_weights=_grads(w, dw.to(w.dtype), ins))
    want = dict(out=out64, weights=w64, d_via_out=_grads(out64, dout, ins64), d_via_weights=_grads(w64, dw, ins64))
    return got, want


def _assert_weights_fp32(got, want):
    _assert_fp32_close(got["out"], want["out"], "output")
    _assert_fp32_close(got["weights"], want["weights"], "weights")
    names = ["q", "k", "v"] + [f"param {i}" for i in range(len(got["d_via_out"]) - 3)]
    for via in ("d_via_out", "d_via_weights"):
        for name, g, g64 in zip(names, got[via], want[via]):
            _assert_fp32_close(g, g64, f"{via} {name}")


def _check_weights_against_torch(config, mask, average):
    cfg = CONFIGS[config]
    ref, ours = _pair(cfg)
    ref64 = copy.deepcopy(ref).double()
    gen = torch.Generator().manual_seed(21)
    q, k, v = _inputs(cfg, gen, torch.float32)
    kwargs = _masks(mask, gen, torch.float32, pad=_visible_pad())
    got, want = _run_weights(ours, ref64, q, k, v, kwargs, average, gen)
    extra = int(cfg.get("add_bias_kv", False)) + int(cfg.get("add_zero_attn", False))
    assert got["weights"].shape == ((N, L, S + extra) if average else (N, H, L, S + extra))
    torch.testing.assert_close(got["weights"].sum(-1), torch.ones(got["weights"].shape[:-1]))
    _assert_weights_fp32(got, want)


@pytest.mark.parametrize("mask", MASKS, ids=MASKS)
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_mha_need_weights_matches_torch(config, mask):
    """need_weights=True (fastattn.scaled_masked_softmax): outputs, per-head weights and
    gradients through each, fp32 against torch's module in float64, over the constructor
    options and mask forms (is_causal with appended keys included)."""
    _check_weights_against_torch(config, mask, average=False)


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_mha_need_weights_averaged_matches_torch(config):
    """The same with average_attn_weights=True: weights ``(N, L, S)``, the mean over heads."""
    _check_weights_against_torch(config, "mask2d_and_kpm", average=True)


@pytest.mark.parametrize("average", [True, False], ids=["averaged", "per_head"])
@pytest.mark.parametrize("mask", ["none", "kpm_bool", "mask2d_float", "mask3d_bool"],
                         ids=["none", "kpm_bool", "mask2d_float", "mask3d_bool"])
def test_mha_need_weights_unbatched(mask, average):
    """Unbatched 2-D inputs: the weights lose the batch dim, ``(L, S)`` or ``(H, L, S)``."""
    ref, ours = _pair(dict(add_zero_attn=True))
    ref64 = copy.deepcopy(ref).double()
    gen = torch.Generator().manual_seed(22)
    q, k, v = (torch.randn(n, E, generator=gen) for n in (L, S, S))
    kwargs = _masks(mask, gen, torch.float32, pad=_visible_pad())
    if "key_padding_mask" in kwargs:
        kwargs["key_padding_mask"] = kwargs["key_padding_mask"][0]
    if "attn_mask" in kwargs and kwargs["attn_mask"].dim() == 3:
        kwargs["attn_mask"] = kwargs["attn_mask"][:H]
    got, want = _run_weights(ours, ref64, q, k, v, kwargs, average, gen)
    assert got["out"].shape == (L, E)
    assert got["weights"].shape == ((L, S + 1) if average else (H, L, S + 1))
    _assert_weights_fp32(got, want)


def _assert_lowp(got, want64, want_lowp, what):
    """flash-attn's rule: fastattn in the low dtype against torch in float64 errs at most
    twice as much as torch's own module run in the low dtype, plus a small floor."""
    assert got.dtype == want_lowp.dtype and got.shape == want64.shape, what
    assert not torch.isnan(got).any(), f"{what}: NaN"
    err = (got.double() - want64).abs().max().item()
    bound = 2 * (want_lowp.double() - want64).abs().max().item() + 1e-5 * want64.abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("config,mask", [("batch_first", "mask2d_and_kpm"), ("bias_kv_zero_attn_kdim", "kpm_float"),
                                         ("default", "mask3d_float")],
                         ids=["batch_first-mask2d_and_kpm", "bias_kv_zero_attn_kdim-kpm_float",
                              "default-mask3d_float"])
def test_mha_need_weights_low_precision(config, mask, dtype):
    """fp16/bf16: outputs, per-head weights and gradients through both, by the error-ratio
    rule against torch's module in float64 and the same torch module run in the low dtype."""
    cfg = CONFIGS[config]
    ref, ours = _pair(cfg, dtype)
    ref64 = copy.deepcopy(ref).double()
    gen = torch.Generator().manual_seed(23)
    q, k, v = _inputs(cfg, gen, dtype)
    kwargs = _masks(mask, gen, dtype, pad=_visible_pad())
    got, want = _run_weights(ours, ref64, q, k, v, kwargs, False, torch.Generator().manual_seed(24))
    lowp, _ = _run_weights(ref, ref64, q, k, v, kwargs, False, torch.Generator().manual_seed(24))
    for what in ("out", "weights"):
        _assert_lowp(got[what], want[what], lowp[what], what)
    for via in ("d_via_out", "d_via_weights"):
        for i, (g, g64, g_lowp) in enumerate(zip(got[via], want[via], lowp[via])):
            _assert_lowp(g, g64, g_lowp, f"{via} input {i}")


BACKENDS = ["reference", "triton", "cuda"]


@pytest.mark.parametrize("mask", ["mask2d_and_kpm", "mask2d_bool_kpm_float", "is_causal"],
                         ids=["mask2d_and_kpm", "mask2d_bool_kpm_float", "is_causal"])
@pytest.mark.parametrize("backend", BACKENDS, ids=BACKENDS)
def test_mha_need_weights_backends(backend, mask):
    """Each softmax backend behind the module (Triton under the interpreter and the CUDA
    kernels on the host SIMT runtime when there is no GPU): the same results as torch."""
    device = torch.device("cpu")
    why = fastattn.dispatch.unavailable_reason(backend, device)
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    cfg = CONFIGS["bias_kv"]
    ref, ours = _pair(cfg)
    ref64 = copy.deepcopy(ref).double()
    gen = torch.Generator().manual_seed(25)
    q, k, v = _inputs(cfg, gen, torch.float32)
    kwargs = _masks(mask, gen, torch.float32, pad=_visible_pad())
    with fastattn.backend(backend):
        got, want = _run_weights(ours, ref64, q, k, v, kwargs, False, gen)
    _assert_weights_fp32(got, want)


def _spy(monkeypatch, name):
    """Record the args and the result of every ``fastattn.<name>`` call."""
    calls = []
    original = getattr(fastattn, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(fastattn, name, spy)
    return calls


def test_mha_need_weights_is_served_by_fastattn(monkeypatch):
    """need_weights=True (torch's default) runs fastattn.scaled_masked_softmax, whose result
    is exactly the per-head weights returned; torch's forward and SDPA are not called.
    Bool masks reach the op as one bool mask, broadcast (no per-head copy)."""
    ref, ours = _pair(dict(batch_first=True))
    gen = torch.Generator().manual_seed(26)
    q, k, v = _inputs(dict(batch_first=True), gen, torch.float32)
    pad = _visible_pad()
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    torch_calls = []
    torch_forward = nn.MultiheadAttention.forward
    monkeypatch.setattr(nn.MultiheadAttention, "forward",
                        lambda *a, **kw: torch_calls.append(1) or torch_forward(*a, **kw))
    sdpa_calls = _count_calls(monkeypatch)
    softmax_calls = _spy(monkeypatch, "scaled_masked_softmax")
    out, w = ours(q, k, v, key_padding_mask=pad, attn_mask=causal, average_attn_weights=False)
    assert not torch_calls and not sdpa_calls
    (args, kwargs, probs), = softmax_calls
    assert probs is w
    mask = args[1]
    assert mask.dtype == torch.bool and mask.shape == (N, 1, L, S)
    assert torch.equal(mask, causal | pad[:, None, None, :])
    # is_causal with no padding mask: the hint replaces the mask (the op's causal rule).
    softmax_calls.clear()
    out_c, w_c = ours(q, k, v, attn_mask=causal, is_causal=True)
    (args, kwargs, _), = softmax_calls
    assert args[1] is None and kwargs["causal"] is True
    monkeypatch.undo()
    want, want_w = ref(q, k, v, key_padding_mask=pad, attn_mask=causal, average_attn_weights=False)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(w, want_w)
    want_c, want_wc = ref(q, k, v, attn_mask=causal, is_causal=True)
    torch.testing.assert_close(out_c, want_c)
    torch.testing.assert_close(w_c, want_wc)


def test_mha_need_weights_dropout_train_mode():
    """Training-mode dropout acts on the weights, and the weights returned are the ones used:
    each entry is 0 or the dropout-free weight / (1 - p); the output is those weights times
    the value projection, projected out; gradients match torch's module drawing the same mask
    from the same seed (torch's need_weights=True path drops out the same (N*H, L, S) tensor)."""
    p = 0.3
    ref, ours = _pair(dict(batch_first=True, dropout=p))
    gen = torch.Generator().manual_seed(27)
    q, k, v = (t.requires_grad_() for t in _inputs(dict(batch_first=True), gen, torch.float32))
    ours.eval()
    clean = ours(q, k, v, average_attn_weights=False)[1].detach()
    assert (clean > 0).all()
    ours.train()
    torch.manual_seed(11)
    out, w = ours(q, k, v, average_attn_weights=False)
    kept = w != 0
    assert 0.55 < kept.double().mean().item() < 0.85  # 1 - p = 0.7; 756 draws: sd 0.017
    torch.testing.assert_close(w[kept], clean[kept] / (1 - p), rtol=1e-6, atol=0)
    w_v, b_v = ours.in_proj_weight.chunk(3)[2], ours.in_proj_bias.chunk(3)[2]
    v_heads = torch.nn.functional.linear(v, w_v, b_v).view(N, S, H, E // H).transpose(1, 2)
    expected = ours.out_proj((w @ v_heads).transpose(1, 2).reshape(N, L, E))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(11)
    again, w_again = ours(q, k, v, average_attn_weights=False)
    assert torch.equal(again, out) and torch.equal(w_again, w)
    torch.manual_seed(11)
    want, want_w = ref(q, k, v, average_attn_weights=False)
    torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    dout, dw = torch.randn(out.shape, generator=gen), torch.randn(w.shape, generator=gen)
    grads = torch.autograd.grad((out, w), [q, k, v, *ours.parameters()], (dout, dw))
    want_grads = torch.autograd.grad((want, want_w), [q, k, v, *ref.parameters()], (dout, dw))
    for g, g_want in zip(grads, want_grads):
        torch.testing.assert_close(g, g_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "float_inf"], ids=["bool", "float_inf"])
def test_mha_need_weights_fully_masked_rows(kind):
    """fastattn's rule (the docstring's): a row that sees no key gets all-zero weights and the
    output ``out_proj(0)`` = its bias, where torch's need_weights=True path gives NaN; the
    other rows equal torch's, and gradients stay finite."""
    ref, ours = _pair(dict(batch_first=True))
    gen = torch.Generator().manual_seed(28)
    q, k, v = (t.requires_grad_() for t in _inputs(dict(batch_first=True), gen, torch.float32))
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1] = True
    kpm = pad if kind == "bool" else torch.zeros(N, S).masked_fill(pad, float("-inf"))
    out, w = ours(q, k, v, key_padding_mask=kpm, average_attn_weights=False)
    want, want_w = ref(q, k, v, key_padding_mask=kpm, average_attn_weights=False)
    assert torch.isnan(want_w[1]).all() and torch.isnan(want[1]).all()  # torch's behaviour, for the record
    assert torch.equal(w[1], torch.zeros_like(w[1]))
    torch.testing.assert_close(out[1], ours.out_proj.bias.expand(L, E), rtol=0, atol=0)
    keep = [0, 2]
    torch.testing.assert_close(w[keep], want_w[keep])
    torch.testing.assert_close(out[keep], want[keep])
    grads = torch.autograd.grad((out.sum(), w.sum()), [q, k, v, *ours.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_mha_need_weights_trained_float_mask_gets_its_gradient():
    """A float attn_mask that requires grad gets torch's gradient through the weights too."""
    ref, ours = _pair(dict())
    gen = torch.Generator().manual_seed(29)
    q, k, v = _inputs(dict(), gen, torch.float32)
    bias = torch.randn(L, S, generator=gen)
    mask, mask64 = bias.clone().requires_grad_(), bias.double().requires_grad_()
    out, w = ours(q, k, v, attn_mask=mask)
    ref64 = copy.deepcopy(ref).double()
    want, want_w = ref64(q.double(), k.double(), v.double(), attn_mask=mask64)
    dout = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    dw = torch.randn(want_w.shape, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad((out, w), [mask], (dout.float(), dw.float()))
    (g64,) = torch.autograd.grad((want, want_w), [mask64], (dout, dw))
    _assert_fp32_close(g, g64, "mask gradient")


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
