"""The feed-forward ops, forward and backward, through the public functions on every backend
with a kernel for them (Triton: kernels/activations.py, kernels/feed_forward.py; CUDA C++:
csrc/cuda/activations; the native CPU kernels: csrc/cpu/activations.cpp with torch's GEMMs),
against :mod:`fastattn.reference` in float64.

One case list serves all three: the gated activations (SwiGLU, GEGLU exact and tanh) on ragged
row lengths and on column halves of one fused gate/up projection (strided rows), bias-GELU
(exact and tanh), and the fused gated MLP with a model's weight layouts. Each case checks the
output and the gradient of every input; fp32 to 1e-5 relative, fp16/bf16 by flash-attn's
error-ratio rule (fastattn.testing); every allocation is poisoned (NaN). A backend may decline
only what :data:`DECLINED` names. What only one backend has (Triton's tile configs and their
compile checks, the CPU kernels' threads and size floors, the CUDA kernels' saturation and
misaligned rows) stays in test_triton_ffn.py, test_cpu_ffn.py, test_cuda_activations.py.
"""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference, testing
from backend_cases import backends, compare_on_backend, device_of
from ffn_cases import weights

pytestmark = pytest.mark.usefixtures("poisoned")
BACKENDS = backends("triton", "cuda", "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

DECLINED = {
    # backend: {feature: why}, the features a backend's supports() turns down by design
    "cuda": {"feed_forward": "no fused MLP kernel (the activations only)"},
}

GATED = {
    "swiglu": (lambda backend, g, u: fastattn.swiglu(g, u, backend=backend),
               lambda g, u: reference.gated_activation(g, u, "swiglu")),
    "geglu": (lambda backend, g, u: fastattn.geglu(g, u, backend=backend),
              lambda g, u: reference.gated_activation(g, u, "geglu")),
    "geglu_tanh": (lambda backend, g, u: fastattn.geglu(g, u, approximate="tanh", backend=backend),
                   lambda g, u: reference.gated_activation(g, u, "geglu_tanh")),
}
ROWS = [(7, 1), (3, 5, 129), (2, 4097)]


def _check(backend, features, dtype, fn, ref_fn, inputs):
    compare_on_backend(backend, DECLINED, {*features, DTYPE_IDS[dtype]}, fn, ref_fn, inputs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", ROWS, ids=["x".join(map(str, s)) for s in ROWS])
@pytest.mark.parametrize("activation", list(GATED))
def test_gated_activation(backend, dtype, shape, activation):
    """Row lengths of 1, 129 (a ragged vector tail) and 4097 (more than one block per row)."""
    dev = device_of(backend)
    gate = testing.randn(*shape, dtype=dtype, seed=1, device=dev, scale=3.0, requires_grad=True)
    up = testing.randn(*shape, dtype=dtype, seed=2, device=dev, requires_grad=True)
    _check(backend, {"gated"}, dtype, *GATED[activation], (gate, up))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("activation", list(GATED))
def test_gated_activation_on_halves_of_a_fused_projection(backend, dtype, activation):
    """gate and up as the two column halves of one (tokens, 2 * hidden) projection output (row
    stride 2 * hidden), as a fused gate_up_proj hands them: taken by strides."""
    dev = device_of(backend)
    fused = testing.randn(33, 2 * 96, dtype=dtype, seed=3, device=dev, scale=2.0, requires_grad=True)
    ours, ref = GATED[activation]
    _check(backend, {"gated"}, dtype, lambda b, f: ours(b, *f.chunk(2, dim=-1)), lambda f: ref(*f.chunk(2, dim=-1)),
           (fused,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", ROWS[1:], ids=["x".join(map(str, s)) for s in ROWS[1:]])
@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
def test_bias_gelu(backend, dtype, shape, approximate):
    dev = device_of(backend)
    x = testing.randn(*shape, dtype=dtype, seed=4, device=dev, scale=2.0, requires_grad=True)
    bias = testing.randn(shape[-1], dtype=dtype, seed=5, device=dev, requires_grad=True)
    _check(backend, {"bias_gelu"}, dtype,
           lambda b, x, bias: fastattn.bias_gelu(x, bias, approximate, backend=b),
           lambda x, bias: reference.bias_gelu(x, bias, approximate), (x, bias))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("layout", ["pair", "fused", "transposed"])
@pytest.mark.parametrize("activation", ["swiglu", "geglu_tanh"])
def test_feed_forward(backend, dtype, layout, activation):
    """The fused gated MLP on 2 x 37 tokens (ragged against every tile), dim 64 -> hidden 160 ->
    dim 64, with Llama's separate gate/up weights, Phi-3's fused gate_up rows, or column-major
    weights; gradients of x and of all three weights."""
    dev = device_of(backend)
    torch.manual_seed(6)
    w_gate, w_up, w_down = (w.requires_grad_() for w in weights(160, 64, 64, dtype, layout, device=dev))
    x = testing.randn(2, 37, 64, dtype=dtype, seed=7, device=dev, requires_grad=True)
    _check(backend, {"feed_forward"}, dtype,
           lambda b, x, wg, wu, wd: fastattn.feed_forward(x, (wg, wu), wd, activation, backend=b),
           lambda x, wg, wu, wd: reference.feed_forward(x, (wg, wu), wd, activation), (x, w_gate, w_up, w_down))
