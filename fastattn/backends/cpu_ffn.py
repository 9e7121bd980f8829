"""The ``cpu`` backend's fused bias-GELU and gated MLP (``bias_gelu_*``, ``feed_forward_*``).

bias-GELU is one native kernel each way (``csrc/cpu/activations.cpp``): ``gelu(x + bias)``
and ``dout * gelu'(x + bias)`` in one pass over ``x``, the sum formed in float32.

The gated MLP ``out = (act(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T`` runs its GEMMs
through torch's BLAS (``torch.mm``/``addmm_`` into preallocated buffers) and the gated
activation through the fused native kernel, which reads the two GEMM outputs once and
writes ``act(G) * U`` over ``G`` in place: ``act(G)`` is never materialised, and ``G`` and
``U`` never both for the whole batch, where eager PyTorch holds ``G``, ``U``, ``act(G)``
and ``H`` at once (``3 tokens hidden`` elements at its peak without autograd, 4 saved for
the backward with it).

Forward: ``G = x @ w_gate.T`` straight into the ``hidden`` output; then, by blocks of
token rows, ``U = x_rows @ w_up.T`` into a scratch buffer and ``hidden_rows = act(G_rows) *
U`` in place; then ``out = hidden @ w_down.T``. Memory beyond the outputs: the scratch,
one block of ``U``. Blocks are whole GEMMs of at least 1024 rows, used only when ``U``
would exceed the scratch budget (32 MiB): large GEMMs are what the BLAS runs fastest.

Backward: ``dw_down = dO.T @ H``; ``G`` and ``U`` recomputed (only ``x`` and ``H`` are
saved); by blocks of hidden columns (8 MiB of ``dH`` at most), ``dH = dO @ w_down[:, block]`` into a
scratch and the fused kernel turning ``G``, ``U`` into ``dG = dH * U * act'(G)`` and ``dU =
dH * act(G)`` in place; then ``dx = dG @ w_gate + dU @ w_up``, ``dw_gate = dG.T @ x``,
``dw_up = dU.T @ x`` as whole GEMMs. Memory beyond the gradients: ``2 tokens hidden``
elements and one block of ``dH``. The recompute is the price of saving only ``x`` and
``H``: 8 GEMMs of ``tokens x dim x hidden`` in the backward where eager PyTorch, which
keeps ``G``, ``U``, ``act(G)`` and ``H``, runs 6.

Covered: CPU tensors of fp32, fp16, bf16 (GEMMs in torch's kernels for that dtype, the
activation in float32). Arguments were validated by the public op; only layout plumbing
happens here. The kernels use ``torch.get_num_threads()`` threads, as torch's GEMMs do.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastattn import _C
from fastattn._dtype_codes import ACTIVATION_CODES, DTYPE_CODES
from fastattn.backends.cpu_native import rows_view

_FWD_SCRATCH_BYTES = 32 << 20
"""Byte budget of the forward's scratch (``U``): the pass is split into row blocks only
when ``U`` would exceed it, so batches up to a few thousand tokens run as whole GEMMs (the
speed of the forward is the speed of its GEMMs), larger ones hold a bounded scratch."""
_BWD_SCRATCH_BYTES = 8 << 20
"""Byte budget of the backward's scratch (``dH``), which holds ``G`` and ``U`` whole
besides: ``dH`` is one GEMM of eight there, so its blocks cost little speed."""
_MIN_ROWS = 1024
"""Fewest token rows per forward block. Smaller GEMMs lose BLAS efficiency, the more so
with several threads (measured with 2 threads: 4 GEMMs of 512 rows took 1.35x the time of
one of 2048 in fp32, 2 of 1024 rows 1.05x)."""
_MIN_COLS = 1024
"""Fewest hidden columns per block of ``dH`` in the backward (narrower GEMMs lose BLAS
efficiency)."""


def _supports(*args) -> Optional[str]:
    """``None`` when every tensor among ``args`` is a CPU tensor of a dtype the kernels take.

    Written over ``*args`` so that it serves the forward and backward of both ops.
    """
    for t in args:
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu":
                return "the native CPU kernels take CPU tensors"
            if t.dtype not in DTYPE_CODES:
                return f"dtype {t.dtype} (the CPU kernels take float32, float16 or bfloat16)"
    return None


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """``(t', rows, cols, row_stride)``: ``t`` itself when its leading dims flatten to rows of
    contiguous elements, else a contiguous copy (a layout no row stride describes)."""
    view = rows_view(t)
    if view is None:
        t = t.contiguous()
        view = rows_view(t)
    return (t, *view)


# --------------------------------------------------------------------------- bias-GELU


def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """``gelu(x + bias, approximate)``: ``x`` ``(..., n)``, ``bias`` ``(n,)`` (any stride), one
    dtype; ``approximate`` "none" (erf) or "tanh". Returns a new contiguous tensor like ``x``."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    x, rows, cols, sx = _rows(x)
    _C.bias_gelu_fwd(x.data_ptr(), bias.data_ptr(), out.data_ptr(), rows, cols, sx, bias.stride(0), cols,
                     DTYPE_CODES[x.dtype], approximate == "tanh", torch.get_num_threads())
    return out


def bias_gelu_bwd(dout: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """``dout * gelu'(x + bias)``, shape and dtype of ``x``; a new contiguous tensor. The bias
    gradient (its sum over rows) is the caller's, which reduces in float32."""
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if dx.numel() == 0:
        return dx
    dout, rows, cols, sd = _rows(dout)
    x, _, _, sx = _rows(x)
    _C.bias_gelu_bwd(dout.data_ptr(), x.data_ptr(), bias.data_ptr(), dx.data_ptr(), rows, cols, sd, sx,
                     bias.stride(0), cols, DTYPE_CODES[x.dtype], approximate == "tanh", torch.get_num_threads())
    return dx


# --------------------------------------------------------------------------- gated MLP


def _block(total: int, bytes_per_item: int, budget: int, minimum: int) -> int:
    """Items (rows or columns) per block: ``total`` when its buffer fits ``budget`` bytes,
    else equal blocks of at least ``minimum`` items that fit it where ``minimum`` allows."""
    per = max(minimum, budget // max(bytes_per_item, 1), 1)
    if per >= total:
        return max(total, 1)
    blocks = -(-total // per)
    return -(-total // blocks)


def _gated_fwd(g: torch.Tensor, u: torch.Tensor, out: torch.Tensor, activation: str) -> None:
    """``out = act(g) * u`` over 2-D row-strided views (inner stride 1)."""
    rows, cols = g.shape
    _C.gated_act_fwd(g.data_ptr(), u.data_ptr(), out.data_ptr(), rows, cols, g.stride(0), u.stride(0),
                     out.stride(0), DTYPE_CODES[g.dtype], ACTIVATION_CODES[activation], torch.get_num_threads())


def feed_forward_fwd(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                     activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated MLP forward: ``x`` ``(..., K)``, ``w_gate``/``w_up`` ``(N, K)``, ``w_down``
    ``(K_out, N)``, one dtype, any strides; ``activation`` "swiglu" | "geglu" | "geglu_tanh".

    Returns contiguous ``(out (..., K_out), hidden (..., N))`` with ``hidden = act(x @
    w_gate.T) * (x @ w_up.T)``, which the backward takes instead of the pre-activations.
    """
    lead, K, N, K_out = x.shape[:-1], x.shape[-1], w_gate.shape[0], w_down.shape[0]
    with torch.no_grad():
        M = math.prod(lead)  # reshape(-1, K) is ambiguous when K == 0
        x2 = x.reshape(M, K)
        hidden = torch.empty((M, N), dtype=x.dtype, device=x.device)
        out = torch.empty((M, K_out), dtype=x.dtype, device=x.device)
        if M and N:
            # G straight into the hidden output, where the fused kernel overwrites it in place
            # with H = act(G) * U, U computed block by block into a small scratch.
            torch.mm(x2, w_gate.t(), out=hidden)
            rows = _block(M, N * x.element_size(), _FWD_SCRATCH_BYTES, _MIN_ROWS)
            scratch = torch.empty((rows, N), dtype=x.dtype, device=x.device)
            for r0 in range(0, M, rows):
                r1 = min(M, r0 + rows)
                u = scratch[: r1 - r0]
                torch.mm(x2[r0:r1], w_up.t(), out=u)
                _gated_fwd(hidden[r0:r1], u, hidden[r0:r1], activation)
            torch.mm(hidden, w_down.t(), out=out)
        elif M:
            out.zero_()  # hidden size 0: an empty sum
    return out.view(*lead, K_out), hidden.view(*lead, N)


def feed_forward_bwd(dout: torch.Tensor, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                     w_down: torch.Tensor, hidden: torch.Tensor,
                     activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gated MLP backward for ``dout`` ``(..., K_out)``: returns contiguous ``(dx, dw_gate,
    dw_up, dw_down)`` in the shapes and dtype of ``x`` and the weights. The pre-activations
    are recomputed from ``x`` block by block (``hidden`` gives ``dw_down``)."""
    K, N = x.shape[-1], w_gate.shape[0]
    dtype, device = x.dtype, x.device
    with torch.no_grad():
        M = math.prod(x.shape[:-1])
        x2 = x.reshape(M, K)
        d2 = dout.reshape(M, dout.shape[-1])
        h2 = hidden.reshape(M, N)
        dx = torch.empty((M, K), dtype=dtype, device=device)
        dw_gate = torch.empty(w_gate.shape, dtype=dtype, device=device)
        dw_up = torch.empty(w_up.shape, dtype=dtype, device=device)
        dw_down = torch.empty(w_down.shape, dtype=dtype, device=device)
        if M == 0 or N == 0:
            for t in (dw_gate, dw_up, dx):
                t.zero_()
            torch.mm(d2.t(), h2, out=dw_down)
            return dx.view(x.shape), dw_gate, dw_up, dw_down
        # G and U recomputed whole (two large GEMMs); dH by column blocks into a scratch, each
        # block turned into dG/dU in place in G's and U's columns (the kernel reads a tile
        # before writing it).
        g = torch.empty((M, N), dtype=dtype, device=device)
        u = torch.empty((M, N), dtype=dtype, device=device)
        torch.mm(x2, w_gate.t(), out=g)
        torch.mm(x2, w_up.t(), out=u)
        cols = _block(N, M * x.element_size(), _BWD_SCRATCH_BYTES, _MIN_COLS)
        scratch = torch.empty(M * cols, dtype=dtype, device=device)
        for n0 in range(0, N, cols):
            n1 = min(N, n0 + cols)
            dh = scratch[: M * (n1 - n0)].view(M, n1 - n0)
            torch.mm(d2, w_down[:, n0:n1], out=dh)
            gp, up = (t.data_ptr() + n0 * t.element_size() for t in (g, u))  # column n0, row stride N
            _C.gated_act_bwd(dh.data_ptr(), gp, up, gp, up, M, n1 - n0, n1 - n0, N, N, N, N, DTYPE_CODES[dtype],
                             ACTIVATION_CODES[activation], torch.get_num_threads())
        del scratch, dh
        # Ordered so that dG and dU are released before the last weight gradients are written
        # (the output buffers' pages become resident only as they are written).
        torch.mm(g, w_gate, out=dx)
        dx.addmm_(u, w_up)
        torch.mm(g.t(), x2, out=dw_gate)
        del g
        torch.mm(u.t(), x2, out=dw_up)
        del u
        torch.mm(d2.t(), h2, out=dw_down)
    return dx.view(x.shape), dw_gate, dw_up, dw_down


OPS = {op: (globals()[op], _supports) for op in ("bias_gelu_fwd", "bias_gelu_bwd", "feed_forward_fwd",
                                                  "feed_forward_bwd")}
