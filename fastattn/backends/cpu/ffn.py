"""The ``cpu`` backend's fused bias-GELU and gated MLP (``bias_gelu_*``, ``feed_forward_*``).

bias-GELU is one native kernel each way (``csrc/cpu/activations.cpp``): ``gelu(x + bias)``
and ``dout * gelu'(x + bias)`` in one pass over ``x``, the sum formed in float32.

The gated MLP ``out = (act(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T`` runs its GEMMs
through torch's BLAS (``torch.mm``/``addmm_`` into preallocated buffers and their slices) and
the gated activation through the fused native kernels, which read the GEMM outputs once.
Its core ops keep ``residuals="gate_up"`` for the backward (``fastattn.ops.ffn.RESIDUALS``):

Forward, no gradient (``"none"``): ``G = x @ w_gate.T`` straight into one buffer; then, by
blocks of token rows, ``U = x_rows @ w_up.T`` into a scratch and ``H_rows = act(G_rows) * U``
written over ``G`` in place; then ``out = H @ w_down.T``. ``G`` and ``U`` are never both held
whole, where eager PyTorch holds ``G``, ``U``, ``act(G)`` and ``H`` at once.

Forward, gradient needed (``"gate_up"``): ``G`` and ``U`` whole (kept for the backward), then
by blocks of rows ``H_rows`` into a scratch and ``out_rows = H_rows @ w_down.T``. Kept: ``2
tokens hidden`` elements, where eager PyTorch keeps 4 (``G``, ``act(G)``, ``U``, ``H``).
Forward blocks are whole GEMMs of at least 1024 rows, used only when the scratch would exceed
32 MiB: large GEMMs are what the BLAS runs fastest.

Backward: by blocks of about a third of the hidden columns, ``H = act(G) * U`` into scratch
``b`` and ``dw_down[:, blk] = dO.T @ H``; ``dH = dO @ w_down[:, blk]`` into scratch ``a``; the
fused kernel turning ``dH``, ``G``, ``U`` into ``dG = dH * U * act'(G)`` over ``a`` and ``dU =
dH * act(G)`` over ``b``; then ``dw_gate[blk] = dG.T @ x``, ``dw_up[blk] = dU.T @ x`` and ``dx
+= dG @ w_gate[blk] + dU @ w_up[blk]``. The six GEMMs of the unfused MLP's backward and no
recompute; ``G`` and ``U`` are read, never written (a retained graph can run its backward
again). Memory beyond the gradients: the two scratch blocks, two thirds of ``G`` together.

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
from fastattn.backends.cpu.activations import rows_view

_FWD_SCRATCH_BYTES = 32 << 20
"""Byte budget of the forward's scratch (``U`` without a gradient, ``H`` with one): the pass
is split into row blocks only when it would exceed it, so batches up to a few thousand tokens run as whole GEMMs (the
speed of the forward is the speed of its GEMMs), larger ones hold a bounded scratch."""
_BWD_BLOCKS = 3
"""The backward works on about this many blocks of hidden columns, one at a time, so that
its two scratch buffers hold two thirds of ``G``'s size together, not twice it; a block's
six GEMMs ran within 2% of the whole-width ones (2048 x 1024 x 2816 fp32 and 512 x 2048 x
5632 bf16, 1 thread), six blocks 3-4% slower."""
_MIN_ROWS = 1024
"""Fewest token rows per forward block. Smaller GEMMs lose BLAS efficiency, the more so
with several threads (measured with 2 threads: 4 GEMMs of 512 rows took 1.35x the time of
one of 2048 in fp32, 2 of 1024 rows 1.05x)."""
_MIN_COLS = 512
"""Fewest hidden columns per block in the backward (narrower GEMMs lose BLAS efficiency)."""
_COL_ALIGN = 64
"""Backward blocks are whole multiples of this many hidden columns: a block edge off the
64-column grid (a misaligned start in every row of ``G``, ``U`` and the weights) made the
six GEMMs about 12% slower (fp32, 2048 x 1024 x 2816: blocks of 939 columns against 1408)."""


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
    _C.bias_gelu_fwd({"x": x.data_ptr(), "bias": bias.data_ptr(), "out": out.data_ptr(), "rows": rows, "cols": cols,
                      "stride_x": sx, "stride_bias": bias.stride(0), "stride_out": cols, "dtype": DTYPE_CODES[x.dtype],
                      "tanh": approximate == "tanh", "num_threads": torch.get_num_threads()})
    return out


def bias_gelu_bwd(dout: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """``dout * gelu'(x + bias)``, shape and dtype of ``x``; a new contiguous tensor. The bias
    gradient (its sum over rows) is the caller's, which reduces in float32."""
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if dx.numel() == 0:
        return dx
    dout, rows, cols, sd = _rows(dout)
    x, _, _, sx = _rows(x)
    _C.bias_gelu_bwd({"dout": dout.data_ptr(), "x": x.data_ptr(), "bias": bias.data_ptr(), "dx": dx.data_ptr(),
                      "rows": rows, "cols": cols, "stride_dout": sd, "stride_x": sx, "stride_bias": bias.stride(0),
                      "stride_dx": cols, "dtype": DTYPE_CODES[x.dtype], "tanh": approximate == "tanh",
                      "num_threads": torch.get_num_threads()})
    return dx


# --------------------------------------------------------------------------- gated MLP


def _block(total: int, bytes_per_item: int, budget: int, minimum: int) -> int:
    """Items (rows) per block: ``total`` when its buffer fits ``budget`` bytes, else equal
    blocks of at least ``minimum`` items that fit it where ``minimum`` allows."""
    per = max(minimum, budget // max(bytes_per_item, 1), 1)
    if per >= total:
        return max(total, 1)
    blocks = -(-total // per)
    return -(-total // blocks)


def _row_blocks(M: int, N: int, like: torch.Tensor):
    """``(r0, r1, buf)`` for the blocks of rows covering ``[0, M)`` (:func:`_block` under
    ``_FWD_SCRATCH_BYTES``), ``buf`` a ``(r1 - r0, N)`` view of one scratch in ``like``'s dtype
    that every block reuses (freed when the loop ends)."""
    rows = _block(M, N * like.element_size(), _FWD_SCRATCH_BYTES, _MIN_ROWS)
    scratch = torch.empty((rows, N), dtype=like.dtype, device=like.device)
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        yield r0, r1, scratch[: r1 - r0]


def _columns_per_block(hidden: int) -> int:
    """Hidden columns per backward block: ``hidden / _BWD_BLOCKS`` rounded up to a multiple of
    ``_COL_ALIGN``, at least ``_MIN_COLS``, at most ``hidden``."""
    per = max(_MIN_COLS, -(-hidden // _BWD_BLOCKS))
    return max(1, min(hidden, -(-per // _COL_ALIGN) * _COL_ALIGN))


def _gated_fwd(g: torch.Tensor, u: torch.Tensor, out: torch.Tensor, activation: str) -> None:
    """``out = act(g) * u`` over 2-D row-strided views (inner stride 1)."""
    rows, cols = g.shape
    _C.gated_act_fwd({"gate": g.data_ptr(), "up": u.data_ptr(), "out": out.data_ptr(), "rows": rows, "cols": cols,
                      "stride_gate": g.stride(0), "stride_up": u.stride(0), "stride_out": out.stride(0),
                      "dtype": DTYPE_CODES[g.dtype], "activation": ACTIVATION_CODES[activation],
                      "num_threads": torch.get_num_threads()})


def feed_forward_fwd(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                     activation: str, residuals: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gated MLP forward: ``x`` ``(..., K)``, ``w_gate``/``w_up`` ``(N, K)``, ``w_down``
    ``(K_out, N)``, one dtype, any strides; ``activation`` "swiglu" | "geglu" | "geglu_tanh".

    Returns contiguous ``(out (..., K_out), res_a, res_b)``. ``residuals="gate_up"`` (a
    gradient will be taken): ``res_a = G = x @ w_gate.T`` and ``res_b = U = x @ w_up.T``, each
    ``(..., N)``, for the backward; ``"none"``: both empty, and ``G``/``U`` never held whole.
    """
    if residuals not in ("none", "gate_up"):
        raise ValueError(f"residuals must be 'none' or 'gate_up' for the cpu feed-forward, got {residuals!r}")
    lead, K, N, K_out = x.shape[:-1], x.shape[-1], w_gate.shape[0], w_down.shape[0]
    with torch.no_grad():
        M = math.prod(lead)  # reshape(-1, K) is ambiguous when K == 0
        x2 = x.reshape(M, K)
        out = torch.empty((M, K_out), dtype=x.dtype, device=x.device)
        if residuals == "none":
            _forward_in_place(x2, w_gate, w_up, w_down, activation, out)
            # Two distinct empty tensors: a custom op's outputs may not alias one another.
            return out.view(*lead, K_out), x.new_empty(0), x.new_empty(0)
        g = torch.empty((M, N), dtype=x.dtype, device=x.device)
        u = torch.empty((M, N), dtype=x.dtype, device=x.device)
        if M and N:
            torch.mm(x2, w_gate.t(), out=g)
            torch.mm(x2, w_up.t(), out=u)
            # H by blocks of rows into a scratch, each block's down projection straight after.
            for r0, r1, h in _row_blocks(M, N, x):
                _gated_fwd(g[r0:r1], u[r0:r1], h, activation)
                torch.mm(h, w_down.t(), out=out[r0:r1])
        elif M:
            out.zero_()  # hidden size 0: an empty sum
    return out.view(*lead, K_out), g.view(*lead, N), u.view(*lead, N)


def _forward_in_place(x2, w_gate, w_up, w_down, activation: str, out: torch.Tensor) -> None:
    """``out = H @ w_down.T`` with ``H`` written over ``G``: inference, nothing kept."""
    (M, K), N = x2.shape, w_gate.shape[0]
    if not (M and N):
        out.zero_()  # hidden size 0: an empty sum
        return
    # G straight into the buffer where the fused kernel overwrites it in place with
    # H = act(G) * U, U computed block by block into a small scratch.
    hidden = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    torch.mm(x2, w_gate.t(), out=hidden)
    for r0, r1, u in _row_blocks(M, N, x2):
        torch.mm(x2[r0:r1], w_up.t(), out=u)
        _gated_fwd(hidden[r0:r1], u, hidden[r0:r1], activation)
    torch.mm(hidden, w_down.t(), out=out)


def feed_forward_bwd(dout: torch.Tensor, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                     w_down: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str,
                     residuals: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gated MLP backward for ``dout`` ``(..., K_out)`` from the ``"gate_up"`` residuals
    ``gate`` = ``G`` and ``up`` = ``U`` (read, never written: a second backward of a retained
    graph sees them intact). Returns contiguous ``(dx, dw_gate, dw_up, dw_down)`` in the shapes
    and dtype of ``x`` and the weights; no GEMM is recomputed."""
    if residuals != "gate_up":
        raise ValueError(f"the cpu feed-forward backward takes residuals='gate_up', got {residuals!r}")
    K, N = x.shape[-1], w_gate.shape[0]
    dtype, device = x.dtype, x.device
    with torch.no_grad():
        M = math.prod(x.shape[:-1])
        x2 = x.reshape(M, K)
        d2 = dout.reshape(M, dout.shape[-1])
        g2, u2 = gate.reshape(M, N), up.reshape(M, N)
        dx = torch.empty((M, K), dtype=dtype, device=device)
        dw_gate = torch.empty(w_gate.shape, dtype=dtype, device=device)
        dw_up = torch.empty(w_up.shape, dtype=dtype, device=device)
        dw_down = torch.empty(w_down.shape, dtype=dtype, device=device)
        if M == 0 or N == 0:
            for t in (dx, dw_gate, dw_up, dw_down):
                t.zero_()
            return dx.view(x.shape), dw_gate, dw_up, dw_down
        # By blocks of hidden columns, every GEMM of the block straight after its elementwise
        # pass, so that nothing of hidden size is allocated whole: scratch a holds dH, then dG;
        # scratch b holds H, then dU. The sums over hidden (dx) accumulate block by block.
        cols = _columns_per_block(N)
        scratch_a = torch.empty(M * cols, dtype=dtype, device=device)
        scratch_b = torch.empty(M * cols, dtype=dtype, device=device)
        threads = torch.get_num_threads()
        for n0 in range(0, N, cols):
            n1 = min(N, n0 + cols)
            a = scratch_a[: M * (n1 - n0)].view(M, n1 - n0)
            b = scratch_b[: M * (n1 - n0)].view(M, n1 - n0)
            g, u = g2[:, n0:n1], u2[:, n0:n1]
            _gated_fwd(g, u, b, activation)  # H
            torch.mm(d2.t(), b, out=dw_down[:, n0:n1])
            torch.mm(d2, w_down[:, n0:n1], out=a)  # dH
            # dG over dH and dU over H, in place (the kernel reads a tile before writing it).
            _C.gated_act_bwd({"dout": a.data_ptr(), "gate": g.data_ptr(), "up": u.data_ptr(), "dgate": a.data_ptr(),
                              "dup": b.data_ptr(), "rows": M, "cols": n1 - n0, "stride_dout": n1 - n0,
                              "stride_gate": N, "stride_up": N, "stride_dgate": n1 - n0, "stride_dup": n1 - n0,
                              "dtype": DTYPE_CODES[dtype], "activation": ACTIVATION_CODES[activation],
                              "num_threads": threads})
            torch.mm(a.t(), x2, out=dw_gate[n0:n1])
            torch.mm(b.t(), x2, out=dw_up[n0:n1])
            if n0 == 0:
                torch.mm(a, w_gate[n0:n1], out=dx)
            else:
                dx.addmm_(a, w_gate[n0:n1])
            dx.addmm_(b, w_up[n0:n1])
    return dx.view(x.shape), dw_gate, dw_up, dw_down


feed_forward_fwd.residuals = "gate_up"
"""What this backend keeps for the backward (:data:`fastattn.ops.ffn.RESIDUALS`): ``G`` and
``U``, so that the backward runs the six GEMMs of the unfused MLP and no recompute."""


OPS = {op: (globals()[op], _supports) for op in ("bias_gelu_fwd", "bias_gelu_bwd", "feed_forward_fwd",
                                                  "feed_forward_bwd")}
