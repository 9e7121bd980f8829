"""``auto`` runs a gated activation on the CPU with whichever of fastattn's native kernel and
torch's own eager ops the measured table (benchmarks/bench_cpu_activation_crossover.py) says is
faster at that size; both give the reference's answer, forward and backward. A plain eager call
without a gradient runs the native kernel without the custom op's dispatch; a watched or
differentiated call goes through the op; an explicit ``backend="cpu"`` always runs the kernel."""
import pytest
import torch

import fastattn
from fastattn import dispatch, reference, testing
from fastattn.backends.cpu import activation_crossover as crossover
from fastattn.ops import ffn as ffn_ops
from recording_mode import RecordingMode

pytest.importorskip("fastattn.backends.cpu.activations", reason="fastattn._C (native CPU kernels) not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
ACTIVATIONS = ["swiglu", "geglu", "geglu_tanh"]


@pytest.fixture(autouse=True)
def poison(poisoned):
    yield


def _call(activation, gate, up, **kw):
    if activation == "swiglu":
        return fastattn.swiglu(gate, up, **kw)
    return fastattn.geglu(gate, up, approximate="tanh" if activation == "geglu_tanh" else "none", **kw)


def _check(activation, gate, up, out, grads=None, dout=None):
    """``out`` (and the gradients of ``<out, dout>``) against the reference in float64, by the
    project's rule (the low-precision reference run in the inputs' dtype)."""
    inputs = (gate.detach(), up.detach())

    def fn(g, u):
        return reference.gated_activation(g, u, activation)

    ref64, g64 = testing.forward_and_grads(fn, inputs, dout, compute_dtype=torch.float64)
    lowp, glp = testing.forward_and_grads(fn, inputs, dout)
    testing.assert_close(out, ref64, lowp, name="out")
    for name, got, r64, rlp in zip(("dgate", "dup"), grads or (), g64, glp):
        testing.assert_close(got, r64, rlp, name=name, scale=max(r64.abs().max().item(), 1.0))


def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or real(*a, **k))


def test_table_is_measured_and_well_formed():
    entries = crossover.TABLE.entries()
    assert entries, "the table must be checked in (python benchmarks/bench_cpu_activation_crossover.py --write)"
    for e in entries:
        assert e["activation"] in ACTIVATIONS and e["direction"] in ("fwd", "fwd+bwd")
        assert e["elements"] == e["tokens"] * e["hidden"] > 0 and e["threads"] >= 1
        assert e["torch_over_fastattn"] == pytest.approx(e["torch_us"] / e["fastattn_us"])
    assert crossover.TABLE.machine()["cpu"]
    # The decision at each measured case is its own measurement: torch's ops where they were
    # faster by more than the noise.
    threads = torch.get_num_threads()
    try:
        for e in entries:
            torch.set_num_threads(e["threads"])
            decision = crossover.prefer_torch(e["activation"], getattr(torch, e["dtype"]), e["elements"],
                                              e["direction"] == "fwd+bwd")
            assert decision == (e["torch_over_fastattn"] < crossover.ON_PAR), e
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("prefer", [True, False], ids=["torch-ops", "native-kernel"])
def test_auto_matches_the_reference_on_either_route(activation, dtype, prefer, monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: prefer)
    used = []
    _spy(monkeypatch, crossover, "torch_gated", used)
    gate, up = (testing.randn(3, 5, 67, dtype=dtype, seed=s, scale=3.0) for s in (1, 2))
    out = _call(activation, gate, up)
    assert used == (["torch_gated"] if prefer else [])
    assert out.dtype == dtype and out.shape == gate.shape
    _check(activation, gate, up, out)
    # Forward and backward on the same route.
    used.clear()
    gate.requires_grad_(True)
    up.requires_grad_(True)
    dout = testing.randn(3, 5, 67, dtype=dtype, seed=3)
    out = _call(activation, gate, up)
    grads = torch.autograd.grad(out, (gate, up), dout)
    assert used == (["torch_gated"] if prefer else [])
    _check(activation, gate, up, out.detach(), grads, dout)


def test_torch_route_computes_in_fp32_and_rounds_once():
    """For 16-bit inputs, torch's route is the kernels' math: act and product in float32, one
    rounding; bit-equal to the native kernel where both round the same float32 value."""
    gate, up = (testing.randn(4, 300, dtype=torch.bfloat16, seed=s, scale=2.0) for s in (4, 5))
    ours = crossover.torch_gated(gate, up, "swiglu")
    exact = (torch.nn.functional.silu(gate.float()) * up.float()).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, exact)


def test_plain_call_without_gradient_skips_the_custom_op(monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: False)
    monkeypatch.setattr(ffn_ops, "_gated_act_fwd", lambda *a: pytest.fail("a plain call went through the op"))
    gate, up = (testing.randn(2, 129, seed=s) for s in (6, 7))
    with torch.inference_mode():
        out = fastattn.swiglu(gate, up)
    _check("swiglu", gate, up, out)


def test_watched_or_differentiated_calls_go_through_the_custom_op(monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: False)
    gate, up = (testing.randn(2, 129, seed=s) for s in (8, 9))
    with RecordingMode() as watched:
        fastattn.swiglu(gate, up)
    assert any("fastattn.gated_act_fwd" in op for op in watched.ops), watched.ops
    calls = []
    _spy(monkeypatch, ffn_ops, "_gated_act_fwd", calls)
    fastattn.swiglu(gate.requires_grad_(True), up)
    assert calls == ["_gated_act_fwd"]


def test_explicit_cpu_backend_never_takes_torchs_ops(monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: True)
    monkeypatch.setattr(crossover, "torch_gated", lambda *a: pytest.fail("backend='cpu' ran torch's ops"))
    gate, up = (testing.randn(2, 64, seed=s) for s in (10, 11))
    _check("swiglu", gate, up, fastattn.swiglu(gate, up, backend="cpu"))
    with fastattn.backend("cpu"):
        _check("geglu", gate, up, fastattn.geglu(gate, up))


def test_a_stand_in_implementation_is_not_second_guessed(monkeypatch):
    """The table measured the native kernel; another ``gated_act_fwd`` registered for the cpu
    backend keeps auto's choice."""
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: True)
    monkeypatch.setattr(dispatch, "_IMPLS", dict(dispatch._IMPLS))
    dispatch.register("gated_act_fwd", "cpu", lambda gate, up, activation: torch.full_like(gate, 5.0))
    gate, up = (testing.randn(2, 64, seed=s) for s in (12, 13))
    assert torch.equal(fastattn.swiglu(gate, up), torch.full_like(gate, 5.0))


def test_float64_still_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(crossover, "torch_gated", lambda *a: pytest.fail("float64 has no measurement"))
    gate, up = (testing.randn(2, 64, dtype=torch.float64, seed=s) for s in (14, 15))
    torch.testing.assert_close(fastattn.swiglu(gate, up), reference.swiglu(gate, up), rtol=1e-12, atol=1e-12)
