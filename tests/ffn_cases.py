"""Shared pieces of the feed-forward tests (tests/test_cpu_ffn.py, tests/test_triton_ffn.py):
seeded-by-the-test random inputs, the weight layouts a model hands ``feed_forward``, and the
float64 / input-dtype reference runs that :func:`fastattn.testing.assert_close` compares with.
"""
from __future__ import annotations

import torch

from fastattn import testing


def rand(*shape, dtype=torch.float32, scale=1.0, device="cpu"):
    """Standard-normal values (drawn in float32 from torch's global RNG, which the tests seed)
    times ``scale``, cast to ``dtype`` on ``device``."""
    return (torch.randn(*shape, dtype=torch.float32, device=device) * scale).to(dtype)


def weights(N, K, K_out, dtype, layout, device="cpu"):
    """``(w_gate, w_up, w_down)`` in nn.Linear shapes (``(N, K)``, ``(N, K)``, ``(K_out, N)``)
    with nn.Linear-like scales, laid out as ``layout`` says: ``"pair"`` (Llama's gate_proj and
    up_proj), ``"fused"`` (Phi-3's gate_up_proj: two row halves of one ``(2N, K)`` tensor) or
    ``"transposed"`` (column-major, strides ``(1, rows)``, read in place by strides)."""
    s_in, s_h = K ** -0.5, N ** -0.5
    if layout == "fused":
        w_gate, w_up = rand(2 * N, K, dtype=dtype, scale=s_in, device=device).chunk(2, dim=0)
        return w_gate, w_up, rand(K_out, N, dtype=dtype, scale=s_h, device=device)
    if layout == "pair":
        return (rand(N, K, dtype=dtype, scale=s_in, device=device), rand(N, K, dtype=dtype, scale=s_in, device=device),
                rand(K_out, N, dtype=dtype, scale=s_h, device=device))
    if layout != "transposed":
        raise ValueError(f"layout must be 'pair', 'fused' or 'transposed', got {layout!r}")
    return (rand(K, N, dtype=dtype, scale=s_in, device=device).t(), rand(K, N, dtype=dtype, scale=s_in, device=device).t(),
            rand(N, K_out, dtype=dtype, scale=s_h, device=device).t())


def ref_and_grads(fn, inputs, dout, dtype):
    """``[(out, grads) in float64, (out, grads) in dtype]``: the reference ``fn`` and the
    gradients of ``<fn(*inputs), dout>`` computed on copies of ``inputs`` in each."""
    return [testing.forward_and_grads(fn, inputs, dout, compute_dtype=ct) for ct in (torch.float64, dtype)]
