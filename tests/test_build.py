"""The build: the compiled modules import and work, and kernels/ ships as fastattn.kernels.

The CPU gated-activation kernel (fastattn._C, csrc/cpu/activations.cpp) is the proof of the
C++ -> Python path; it is checked against the float64 reference (fastattn.reference) with
flash-attn's rule for fp16/bf16 and ~1e-5 relative error for fp32, on odd row lengths,
strided rows and NaN-poisoned outputs.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn._dtype_codes import ACTIVATION_CODES, DTYPE_CODES

_C = pytest.importorskip("fastattn._C", reason="fastattn._C is not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACTIVATIONS = ["swiglu", "geglu", "geglu_tanh"]
# (rows, cols): single elements, odd lengths, one row longer than a kernel tile (512),
# a row length that straddles tiles.
SHAPES = [(1, 1), (3, 7), (5, 129), (2, 4097), (4, 1100)]
_ids = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _inputs(rows, cols, dtype, n, width_pad=0, seed=0):
    """``n`` fresh random tensors of ``(rows, cols)``: column slices of wider buffers
    (row stride ``cols + width_pad``) when ``width_pad`` > 0. Gates span +-8 to reach the
    saturated tails of every activation."""
    g = torch.Generator().manual_seed(seed + 1000 * rows + cols)
    out = []
    for i in range(n):
        buf = torch.randn(rows, cols + width_pad, generator=g, dtype=torch.float64) * (3.0 if i == 0 else 1.0)
        out.append(buf.clamp(-8, 8).to(dtype)[:, :cols])
    return out


def _check(out, ref64, ref_lowp, dtype, what):
    """fp32: 1e-5 relative to the largest |ref|; fp16/bf16: flash-attn's rule
    max|out - ref64| <= 2 * max|ref_lowp - ref64| + floor."""
    assert not torch.isnan(out).any(), f"{what}: NaN left in the output (element never written?)"
    err = (out.double() - ref64).abs().max().item()
    scale = ref64.abs().max().item()
    if dtype == torch.float32:
        bound = 1e-5 * scale + 1e-7
    else:
        bound = 2 * (ref_lowp.double() - ref64).abs().max().item() + 1e-5 * scale
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e} (scale {scale:.3e})"


def _ref_fwd(gate, up, activation, dtype):
    ref64 = reference.gated_activation(gate.double(), up.double(), activation)
    ref_lowp = reference.gated_activation(gate, up, activation)
    return ref64, ref_lowp


def _ref_bwd(dout, gate, up, activation):
    """(dgate, dup) of the reference in the dtype of the inputs."""
    g, u = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    reference.gated_activation(g, u, activation).backward(dout)
    return g.grad, u.grad


def _fwd(gate, up, out, activation):
    rows, cols = gate.shape
    _C.gated_act_fwd({"gate": gate.data_ptr(), "up": up.data_ptr(), "out": out.data_ptr(), "rows": rows,
                      "cols": cols, "stride_gate": gate.stride(0), "stride_up": up.stride(0),
                      "stride_out": out.stride(0), "dtype": DTYPE_CODES[gate.dtype],
                      "activation": ACTIVATION_CODES[activation]})


def _bwd(dout, gate, up, dgate, dup, activation):
    rows, cols = gate.shape
    _C.gated_act_bwd({"dout": dout.data_ptr(), "gate": gate.data_ptr(), "up": up.data_ptr(),
                      "dgate": dgate.data_ptr(), "dup": dup.data_ptr(), "rows": rows, "cols": cols,
                      "stride_dout": dout.stride(0), "stride_gate": gate.stride(0), "stride_up": up.stride(0),
                      "stride_dgate": dgate.stride(0), "stride_dup": dup.stride(0),
                      "dtype": DTYPE_CODES[gate.dtype], "activation": ACTIVATION_CODES[activation]})


# ------------------------------------------------------------------------------------ _C

@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gated_act_fwd_matches_reference(shape, dtype, activation):
    gate, up = _inputs(*shape, dtype, 2)
    out = torch.full(shape, float("nan"), dtype=dtype)
    _fwd(gate, up, out, activation)
    _check(out, *_ref_fwd(gate, up, activation, dtype), dtype, f"{activation} fwd")


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gated_act_bwd_matches_reference(shape, dtype, activation):
    gate, up, dout = _inputs(*shape, dtype, 3)
    dgate = torch.full(shape, float("nan"), dtype=dtype)
    dup = torch.full(shape, float("nan"), dtype=dtype)
    _bwd(dout, gate, up, dgate, dup, activation)
    ref64 = _ref_bwd(dout.double(), gate.double(), up.double(), activation)
    ref_lowp = _ref_bwd(dout, gate, up, activation)
    _check(dgate, ref64[0], ref_lowp[0], dtype, f"{activation} dgate")
    _check(dup, ref64[1], ref_lowp[1], dtype, f"{activation} dup")


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
def test_strided_rows_read_and_write_only_their_elements(dtype):
    """Inputs and outputs are column slices of wider NaN-filled buffers, each with its own
    row stride: results match, and the padding columns are never written."""
    rows, cols = 6, 131
    gate, up, dout = (t for t in _inputs(rows, cols, dtype, 3, width_pad=5))
    bufs = [torch.full((rows, cols + pad), float("nan"), dtype=dtype) for pad in (3, 9, 17)]
    out, dgate, dup = (b[:, :cols] for b in bufs)
    _fwd(gate, up, out, "swiglu")
    _bwd(dout, gate, up, dgate, dup, "swiglu")
    _check(out, *_ref_fwd(gate, up, "swiglu", dtype), dtype, "strided fwd")
    ref64 = _ref_bwd(dout.double(), gate.double(), up.double(), "swiglu")
    ref_lowp = _ref_bwd(dout, gate, up, "swiglu")
    _check(dgate, ref64[0], ref_lowp[0], dtype, "strided dgate")
    _check(dup, ref64[1], ref_lowp[1], dtype, "strided dup")
    for b in bufs:
        assert torch.isnan(b[:, cols:]).all(), "a padding column was written"


def test_bwd_in_place_equals_out_of_place():
    """dgate/dup may alias gate/up exactly (each element is read before it is written)."""
    gate, up, dout = _inputs(3, 1030, torch.bfloat16, 3)
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    _bwd(dout, gate, up, dgate, dup, "geglu")
    g, u = gate.clone(), up.clone()
    _bwd(dout, g, u, g, u, "geglu")
    assert torch.equal(g, dgate) and torch.equal(u, dup)


def test_saturated_and_special_values():
    """Far tails saturate as torch does; NaN propagates; infinities give torch's limits."""
    gate = torch.tensor([[-200.0, -90.0, -20.0, 20.0, 90.0, float("inf"), float("nan"), 0.0]])
    up = torch.full_like(gate, 1.5)
    for activation in ACTIVATIONS:
        out = torch.full_like(gate, float("nan"))
        _fwd(gate, up, out, activation)
        ref = reference.gated_activation(gate.double(), up.double(), activation)
        finite = ref.isfinite()
        assert torch.allclose(out.double()[finite], ref[finite], rtol=1e-6, atol=1e-30), activation
        assert torch.isnan(out[0, 6]) and out[0, 5] == float("inf"), activation


def test_bad_codes_and_missing_addresses_raise_value_error():
    t = torch.randn(2, 3)
    spec = {"gate": t.data_ptr(), "up": t.data_ptr(), "out": t.data_ptr(), "rows": 2, "cols": 3, "stride_gate": 3,
            "stride_up": 3, "stride_out": 3, "dtype": 0, "activation": 0}
    with pytest.raises(ValueError, match="dtype code"):
        _C.gated_act_fwd({**spec, "dtype": 7})
    with pytest.raises(ValueError, match="activation code"):
        _C.gated_act_fwd({**spec, "activation": 9})
    with pytest.raises(ValueError, match="missing address"):
        _C.gated_act_fwd({k: v for k, v in spec.items() if k != "up"})
    with pytest.raises(ValueError, match="dtype code"):
        _C.bias_gelu_fwd({"x": t.data_ptr(), "bias": t.data_ptr(), "out": t.data_ptr(), "rows": 2, "cols": 3})


def test_dtype_codes_agree_with_the_kernel():
    """Running fp16 data under the bf16 code (or the reverse) gives wrong numbers: the
    Python table and csrc/common/dtype.h name the same types."""
    assert DTYPE_CODES == {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    gate, up = _inputs(2, 33, torch.float16, 2)
    out = torch.empty_like(gate)
    _C.gated_act_fwd({"gate": gate.data_ptr(), "up": up.data_ptr(), "out": out.data_ptr(), "rows": 2, "cols": 33,
                      "stride_gate": 33, "stride_up": 33, "stride_out": 33, "dtype": DTYPE_CODES[torch.bfloat16],
                      "activation": ACTIVATION_CODES["swiglu"]})
    assert not torch.allclose(out.float(), reference.swiglu(gate.float(), up.float()), atol=1e-2, equal_nan=True)


# ---------------------------------------------------------------- the "cpu" backend wiring

def test_cpu_backend_serves_the_public_ops():
    gate, up = (t.requires_grad_() for t in _inputs(4, 65, torch.float32, 2))
    out = fastattn.swiglu(gate, up, backend="cpu")
    _check(out.detach(), *_ref_fwd(gate.detach(), up.detach(), "swiglu", torch.float32), torch.float32, "swiglu")
    out.backward(torch.ones_like(out))
    dg, du = _ref_bwd(torch.ones(4, 65, dtype=torch.float64), gate.double(), up.double(), "swiglu")
    assert torch.allclose(gate.grad.double(), dg, rtol=1e-5, atol=1e-6)
    assert torch.allclose(up.grad.double(), du, rtol=1e-5, atol=1e-6)
    out = fastattn.geglu(gate.detach(), up.detach(), approximate="tanh", backend="cpu")
    _check(out, *_ref_fwd(gate.detach(), up.detach(), "geglu_tanh", torch.float32), torch.float32, "geglu")


def test_cpu_backend_declines_layouts_it_cannot_take():
    """A last dim with stride 2: ``auto`` falls back (right answer), explicit ``cpu`` says why."""
    gate, up = (t[:, ::2] for t in _inputs(4, 64, torch.float32, 2))
    out = fastattn.swiglu(gate, up)
    assert torch.allclose(out.double(), reference.swiglu(gate.double(), up.double()), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cpu"):
        fastattn.swiglu(gate, up, backend="cpu")


# ---------------------------------------------------------------------------------- _cuda

_CUDA_EXPECTED = os.environ.get("CI") == "true" or shutil.which("nvcc") is not None


def _cuda_module():
    try:
        return importlib.import_module("fastattn._cuda")
    except ImportError as exc:
        if _CUDA_EXPECTED:
            pytest.fail(f"nvcc is present (or CI=true) but fastattn._cuda does not import: {exc}")
        pytest.skip("fastattn._cuda is not built (no nvcc)")


def test_cuda_module_imports_without_a_gpu_and_reports_archs():
    cuda = _cuda_module()
    if os.environ.get("FASTATTN_CUDA_ARCHS") is None:
        assert cuda.compiled_archs() == [80, 86, 89, 90]
        assert cuda.compiled_arch_names() == ["80", "86", "89", "90a"]
    assert cuda.cuda_runtime_version() >= 12000  # sm_90a needs CUDA 12
    assert cuda.device_count() >= 0
    if torch.version.cuda is not None:
        assert cuda.device_count() == torch.cuda.device_count()


def test_cuda_probe_fails_cleanly_without_a_gpu():
    cuda = _cuda_module()
    if cuda.device_count() > 0:
        pytest.skip("a GPU is present (see test_cuda_probe_runs_on_the_gpu)")
    with pytest.raises(RuntimeError):
        cuda.probe_device_arch(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_probe_runs_on_the_gpu():
    cuda = _cuda_module()
    major, minor = torch.cuda.get_device_capability(0)
    ran = cuda.probe_device_arch(0)
    assert ran in cuda.compiled_archs() and ran <= 10 * major + minor


# ------------------------------------------------------------------------- fastattn.kernels

def test_kernels_ship_as_a_subpackage():
    import fastattn.kernels

    assert fastattn.kernels.__name__ == "fastattn.kernels"
    root = Path(fastattn.kernels.__file__).parent
    assert root.name == "kernels"
    attention = importlib.import_module("fastattn.kernels.attention")
    assert Path(attention.__file__).parent == root
    try:
        top_level = importlib.metadata.distribution("fastattn").read_text("top_level.txt")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastattn is not installed (running from a source tree)")
    if top_level is not None:
        assert "kernels" not in top_level.split(), "a top-level 'kernels' package is installed"
