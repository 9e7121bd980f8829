"""fastattn.nn.SwiGLU and fastattn.nn.FeedForward against the Hugging Face MLPs they
replace (LlamaMLP, GPT2MLP), loaded with the same weights: outputs and gradients.

The fastattn modules run through the Triton backend (under the interpreter without a GPU)
and through ``auto``; each is compared with the torch module run in float64 (the
oracle), with fp32 to ~1e-5 of the output's scale and bf16 by the error-ratio rule
against the torch module run in bf16.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn.nn import FeedForward, SwiGLU

transformers = pytest.importorskip("transformers")
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaMLP  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["triton", "auto"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _assert_matches(out, ref64, ref_lowp, what):
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = (out.double() - ref64).abs().max().item()
    if out.dtype == torch.float32:
        tol = 1e-5 * max(ref64.abs().max().item(), 1.0)
    else:  # error ratio, with one output rounding (half an ulp of the largest value) as the floor
        floor = max(1e-5, 0.5 * torch.finfo(out.dtype).eps * ref64.abs().max().item())
        tol = 2 * (ref_lowp.double() - ref64).abs().max().item() + floor
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g}"


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    return module


def _compare(ours, theirs, x, backend, dtype):
    """Outputs and parameter gradients (by name) of ``ours`` vs ``theirs``, both holding
    the same ``dtype``-rounded weights; the oracle is ``theirs`` on those values in float64."""
    x = x.to(dtype)
    dout = torch.randn_like(x)  # both MLPs map (..., dim) -> (..., dim)
    results = {}
    # ours and the low-precision reference first: .to(float64) afterwards keeps their rounded values.
    for tag, module, ct in (("ours", ours, dtype), ("reflp", theirs, dtype), ("ref64", theirs, torch.float64)):
        m = module.to(ct)
        xi = x.detach().to(ct).clone().requires_grad_()
        m.zero_grad()
        if tag == "ours" and backend != "auto":
            with fastattn.backend(backend):
                out = m(xi)
        else:
            out = m(xi)
        out.backward(dout.to(ct))
        results[tag] = (out.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()})
    ours_out, ours_dx, ours_grads = results["ours"]
    _assert_matches(ours_out, results["ref64"][0], results["reflp"][0], "out")
    _assert_matches(ours_dx, results["ref64"][1], results["reflp"][1], "dx")
    assert set(ours_grads) == set(results["ref64"][2])
    for name, g in ours_grads.items():
        ref = results["ref64"][2][name]
        if name.startswith("c_") and name.endswith("weight"):  # Conv1D grads are (in, out)
            ref, lowp = ref.t(), results["reflp"][2][name].t()
        else:
            lowp = results["reflp"][2][name]
        _assert_matches(g, ref, lowp, f"d{name}")


def _llama_mlp(dim, hidden, bias):
    config = transformers.LlamaConfig(hidden_size=dim, intermediate_size=hidden, mlp_bias=bias, hidden_act="silu",
                                      num_attention_heads=4, num_key_value_heads=4)
    return _randomise(LlamaMLP(config)).to(DEVICE)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS, ids=BACKENDS)
def test_swiglu_matches_llama_mlp(backend, dtype, bias):
    dim, hidden = 48, 136
    theirs = _llama_mlp(dim, hidden, bias)
    ours = SwiGLU(dim, hidden, bias=bias, device=DEVICE)
    result = ours.load_state_dict(theirs.state_dict())  # Llama's keys load unchanged
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x = torch.randn(2, 9, dim, device=DEVICE)
    _compare(ours, theirs, x, backend, dtype)


def test_swiglu_fuses_the_mlp(monkeypatch):
    """Without biases the module is one fastattn.feed_forward call on the weights in place."""
    calls = []
    real = fastattn.feed_forward

    def spy(x, w_gate_up, w_down, activation="swiglu", **kw):
        calls.append((w_gate_up, w_down, activation))
        return real(x, w_gate_up, w_down, activation, **kw)

    monkeypatch.setattr(fastattn, "feed_forward", spy)
    m = SwiGLU(16, 40, device=DEVICE)
    m(torch.randn(3, 16, device=DEVICE))
    (w_gate_up, w_down, activation), = calls
    assert w_gate_up[0] is m.gate_proj.weight and w_gate_up[1] is m.up_proj.weight
    assert w_down is m.down_proj.weight and activation == "swiglu"


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"], ids=["gelu_new", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS, ids=BACKENDS)
def test_feed_forward_matches_gpt2_mlp(backend, dtype, activation):
    dim, hidden = 40, 160
    config = transformers.GPT2Config(n_embd=dim, activation_function=activation, resid_pdrop=0.0)
    theirs = _randomise(GPT2MLP(hidden, config)).to(DEVICE)
    ours = FeedForward.from_gpt2(theirs)
    assert ours.activation == ("gelu_tanh" if activation == "gelu_new" else "gelu")
    assert set(ours.state_dict()) == set(theirs.state_dict())  # GPT-2's names
    torch.testing.assert_close(ours.c_fc.weight, theirs.c_fc.weight.t(), rtol=0, atol=0)  # Linear = Conv1D.T
    x = torch.randn(3, 7, dim, device=DEVICE)
    _compare(ours, theirs, x, backend, dtype)


def test_feed_forward_gpt2_state_dict_and_errors():
    config = transformers.GPT2Config(n_embd=8, activation_function="gelu_new")
    theirs = GPT2MLP(32, config)
    ours = FeedForward(8, 32, activation="gelu_tanh")
    ours.load_gpt2_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.c_proj.weight, theirs.c_proj.weight.t(), rtol=0, atol=0)
    torch.testing.assert_close(ours.c_proj.bias, theirs.c_proj.bias, rtol=0, atol=0)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 32, activation="relu")
    quick = GPT2MLP(32, transformers.GPT2Config(n_embd=8, activation_function="quick_gelu"))
    with pytest.raises(ValueError, match="GELU"):
        FeedForward.from_gpt2(quick)


def test_feed_forward_without_bias():
    ours = FeedForward(12, 30, activation="gelu", bias=False, device=DEVICE)
    x = torch.randn(4, 12, device=DEVICE)
    with fastattn.backend("triton"):
        out = ours(x)
    ref = torch.nn.functional.gelu(x.double() @ ours.c_fc.weight.double().t()) @ ours.c_proj.weight.double().t()
    _assert_matches(out, ref, ref, "out")
    assert [n for n, _ in ours.named_parameters()] == ["c_fc.weight", "c_proj.weight"]
