"""Backend selection: the ``fastattn.backend`` block, ``backend=``, ``auto`` and the registry.

Tests that register fake implementations patch copies of dispatch's registries with
monkeypatch, so the global registry is restored whatever happens.
"""
import threading

import pytest
import torch

import fastattn
from fastattn import dispatch
from fastattn.attention_args import AttentionArgs

CPU = torch.device("cpu")


@pytest.fixture
def registry(monkeypatch):
    """Private copies of the implementation and availability registries for one test."""
    dispatch._load_backends()
    monkeypatch.setattr(dispatch, "_IMPLS", dict(dispatch._IMPLS))
    monkeypatch.setattr(dispatch, "_AVAILABILITY", dict(dispatch._AVAILABILITY))
    monkeypatch.setattr(dispatch, "_REASONS", {})  # availability is cached per process: probe the fakes afresh
    return dispatch


def _gate_up(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)


def _fake_gated_act(calls, value):
    def fn(gate, up, activation):
        calls.append(activation)
        return torch.full_like(gate, value)

    return fn


def test_context_manager_nests_and_restores():
    assert dispatch.current_backend() == "auto"
    with fastattn.backend("reference"):
        assert dispatch.current_backend() == "reference"
        with fastattn.backend("cpu"):
            assert dispatch.current_backend() == "cpu"
            with fastattn.backend("auto"):
                assert dispatch.current_backend() == "auto"
            assert dispatch.current_backend() == "cpu"
        assert dispatch.current_backend() == "reference"
    assert dispatch.current_backend() == "auto"


def test_context_manager_restores_after_exception():
    with pytest.raises(RuntimeError, match="inside"):
        with fastattn.backend("reference"):
            raise RuntimeError("inside")
    assert dispatch.current_backend() == "auto"


def test_context_manager_is_thread_local():
    seen = []
    with fastattn.backend("reference"):
        worker = threading.Thread(target=lambda: seen.append(dispatch.current_backend()))
        worker.start()
        worker.join()
    assert seen == ["auto"]


def test_block_choice_reaches_select(registry):
    registry._AVAILABILITY["cuda"] = lambda device: None
    registry._AVAILABILITY["cpu"] = lambda device: "fastattn._C was not built"
    registry.register("gated_act_fwd", "cuda", lambda gate, up, activation: gate)
    gate, up = _gate_up(0)
    with fastattn.backend("cuda"):
        assert dispatch.select("gated_act_fwd", None, CPU, gate, up, "swiglu") == "cuda"
    assert dispatch.select("gated_act_fwd", None, CPU, gate, up, "swiglu") == "reference"


def test_backend_argument_overrides_block(registry):
    calls = []
    registry._AVAILABILITY["cpu"] = lambda device: None
    registry.register("gated_act_fwd", "cpu", _fake_gated_act(calls, 7.0))
    registry._AVAILABILITY["cuda"] = lambda device: "fastattn._cuda was not built"
    gate, up = _gate_up(1)
    expected = torch.nn.functional.silu(gate) * up
    with fastattn.backend("cuda"):  # unusable here: only the explicit argument makes the call work
        torch.testing.assert_close(fastattn.swiglu(gate, up, backend="reference"), expected, rtol=1e-6, atol=1e-6)
        out = fastattn.swiglu(gate, up, backend="cpu")
    assert calls == ["swiglu"] and torch.equal(out, torch.full_like(gate, 7.0))
    with fastattn.backend("cpu"):
        torch.testing.assert_close(fastattn.swiglu(gate, up, backend="reference"), expected, rtol=1e-6, atol=1e-6)
    assert calls == ["swiglu"]


def test_auto_on_cpu_picks_an_available_registered_backend():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=gen) for _ in range(3))
    args = AttentionArgs(scale=0.3)
    for op, call_args, call_kwargs in [
        ("attention_fwd", (q, k, v), dict(attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                                          args=args)),
        ("gated_act_fwd", (q, k, "swiglu"), {}),
        ("softmax_fwd", (q, None, 1.0, False), {}),
    ]:
        name = dispatch.select(op, "auto", CPU, *call_args, **call_kwargs)
        assert name in dispatch.AUTO_ORDER["cpu"]
        assert dispatch.available_backends(CPU)[name] is None
        assert name in dispatch.implementations(op)


def test_reference_is_always_available():
    assert dispatch.available_backends("cpu")["reference"] is None
    assert dispatch.available_backends("meta")["reference"] is None
    assert set(dispatch.available_backends("cpu")) == set(dispatch.BACKENDS)


def test_explicit_unavailable_backend_lists_availability(registry):
    registry._AVAILABILITY["cuda"] = lambda device: "fastattn._cuda was not built"
    with pytest.raises(ValueError) as info:
        dispatch.select("gated_act_fwd", "cuda", CPU)
    message = str(info.value)
    assert "backend='cuda'" in message and "fastattn._cuda was not built" in message
    for name in dispatch.BACKENDS:  # every backend appears with its status
        assert f"{name} (" in message
    assert "reference (ok)" in message


def test_explicit_backend_missing_the_op(registry):
    registry._AVAILABILITY["cpu"] = lambda device: None
    registry._IMPLS = {key: impl for key, impl in registry._IMPLS.items() if key[1] != "cpu"}
    with pytest.raises(ValueError, match="no implementation of gated_act_fwd"):
        dispatch.select("gated_act_fwd", "cpu", CPU)


def test_auto_picks_fake_backend_when_available_and_supported(registry):
    calls = []
    registry._AVAILABILITY["cpu"] = lambda device: None
    registry.register("gated_act_fwd", "cpu", _fake_gated_act(calls, 3.0),
                      supports=lambda gate, up, activation: None)
    gate, up = _gate_up(3)
    assert dispatch.select("gated_act_fwd", "auto", CPU, gate, up, "swiglu") == "cpu"
    out = fastattn.swiglu(gate, up)
    assert calls == ["swiglu"] and torch.equal(out, torch.full_like(gate, 3.0))


def test_auto_skips_fake_backend_that_declines(registry):
    calls = []
    registry._AVAILABILITY["cpu"] = lambda device: None
    registry.register("gated_act_fwd", "cpu", _fake_gated_act(calls, 3.0),
                      supports=lambda gate, up, activation: None if activation == "swiglu" else "no GEGLU here")
    gate, up = _gate_up(4)
    assert dispatch.select("gated_act_fwd", "auto", CPU, gate, up, "geglu") == "reference"
    out = fastattn.geglu(gate, up)
    assert calls == []
    torch.testing.assert_close(out, torch.nn.functional.gelu(gate) * up, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no GEGLU here"):  # the same reason, shown to an explicit request
        fastattn.geglu(gate, up, backend="cpu")


def test_auto_skips_fake_backend_that_is_unavailable(registry):
    calls = []
    registry._AVAILABILITY["cpu"] = lambda device: "fastattn._C was not built"
    registry.register("gated_act_fwd", "cpu", _fake_gated_act(calls, 3.0))
    gate, up = _gate_up(5)
    assert dispatch.select("gated_act_fwd", "auto", CPU, gate, up, "swiglu") == "reference"
    fastattn.swiglu(gate, up)
    assert calls == []


def test_backward_needs_the_backward_op_too(registry):
    """With gradients required, auto only takes a backend implementing forward and backward."""
    calls = []
    registry._AVAILABILITY["cpu"] = lambda device: None
    registry._IMPLS = {key: impl for key, impl in registry._IMPLS.items() if key[1] != "cpu"}
    registry.register("gated_act_fwd", "cpu", _fake_gated_act(calls, 3.0))
    gate, up = _gate_up(6)
    assert dispatch.select(("gated_act_fwd", "gated_act_bwd"), "auto", CPU, gate, up, "swiglu") == "reference"
    gate.requires_grad_(True)
    fastattn.swiglu(gate, up).sum().backward()
    assert calls == [] and gate.grad is not None


def test_auto_never_picks_gpu_backends_for_cpu_tensors(registry):
    calls = []
    for name in ("triton", "cuda"):
        registry._AVAILABILITY[name] = lambda device: None
        registry.register("gated_act_fwd", name, _fake_gated_act(calls, 1.0))
    registry._AVAILABILITY["cpu"] = lambda device: "fastattn._C was not built"
    gate, up = _gate_up(7)
    assert dispatch.select("gated_act_fwd", "auto", CPU, gate, up, "swiglu") == "reference"
    assert dispatch.select("gated_act_fwd", "triton", CPU, gate, up, "swiglu") == "triton"  # on request only


def test_register_rejects_unknown_names(registry):
    with pytest.raises(KeyError, match="unknown core op"):
        registry.register("attention_fwd_v2", "reference", lambda *a: None)
    with pytest.raises(KeyError, match="unknown backend"):
        registry.register("attention_fwd", "tpu", lambda *a: None)
    with pytest.raises(KeyError, match="unknown backend"):
        registry.register_backend("tpu", lambda device: None)


def test_each_backend_is_a_package_declaring_availability_and_its_table():
    """dispatch reads ``available`` and ``OPS`` from one package per backend, and what it
    registered for each op is that package's table entry."""
    import importlib

    dispatch._load_backends()
    for name, package_name in dispatch.BACKEND_PACKAGES.items():
        if name in dispatch.IMPORT_ERRORS:
            continue
        package = importlib.import_module(package_name)
        assert hasattr(package, "__path__"), f"{package_name} is not a package"
        assert callable(package.available)
        assert package.OPS, f"{package_name} declares no ops"
        for op in package.OPS:
            assert dispatch.implementations(op)[name].fn is package.OPS[op][0]


def test_missing_cpu_extension_makes_the_cpu_backend_unavailable_not_import_fastattn_fail():
    """The functional ops import the CPU crossover tables at ``import fastattn``; without a
    loadable ``fastattn._C`` that import still works, the ``cpu`` backend says why it is
    unavailable, and ``auto`` serves the op elsewhere."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['fastattn._C'] = None\n"  # what a missing or broken build gives
        "import torch, fastattn\n"
        "from fastattn import reference, testing\n"
        "why = fastattn.available_backends('cpu')['cpu']\n"
        "assert why is not None and 'fastattn._C' in why, why\n"
        "gate, up = testing.randn(4, 8, seed=1), testing.randn(4, 8, seed=2)\n"
        "ref64 = reference.gated_activation(gate.double(), up.double(), 'swiglu')\n"
        "testing.assert_close(fastattn.swiglu(gate, up), ref64, None, 'swiglu')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
