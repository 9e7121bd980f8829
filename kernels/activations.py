"""Fused elementwise activations for the feed-forward block, forward and backward.

Math (every op computed in fp32 whatever the storage dtype, results rounded once):

* ``swiglu(gate, up)     = silu(gate) * up``,            ``silu(g) = g * sigmoid(g)``
* ``geglu(gate, up)      = gelu(gate) * up``,            exact ``gelu(g) = g/2 * (1 + erf(g/sqrt 2))``
* ``geglu_tanh(gate, up) = gelu_tanh(gate) * up``,       ``gelu_tanh(g) = g/2 * (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))``
* ``bias_gelu(x, bias)   = gelu(x + bias)`` (erf or tanh), ``bias`` ``(n,)`` broadcast over rows.

Shapes: any leading shape ``(..., n)``; the leading dims are seen as rows. The kernels
take every input by strides (rows as an ``outer x inner`` pair of strides, so a slice
such as ``x[:, :T]`` of a 3-D tensor needs no copy, and a column stride that Triton
specialises to 1 in the common case); outputs are allocated contiguous.

Why it is fast: each direction is one pass over memory. The forward reads ``gate`` and
``up`` once and writes ``out``: 3 tensors of traffic instead of the 5 of the two-kernel
torch expression ``silu(gate) * up`` (which writes and re-reads ``silu(gate)``). The
backward recomputes the activation and its derivative from ``gate`` instead of having
saved ``act(gate)`` in the forward: it reads ``dout, gate, up`` and writes ``dgate,
dup`` (5 tensors), and the forward saves nothing but its inputs. Liger-Kernel's
``LigerSiLUMulFunction`` follows the same recompute scheme.

Launchers do no validation (the public op did it) and know nothing of autograd.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Activation codes (constexpr in the kernels).
SWIGLU, GEGLU, GEGLU_TANH = 0, 1, 2
GATED_ACTIVATIONS = {"swiglu": SWIGLU, "geglu": GEGLU, "geglu_tanh": GEGLU_TANH}
GELU_APPROXIMATE = {"none": GEGLU, "tanh": GEGLU_TANH}

_TILE_ELEMENTS = 4096  # elements per program: 16 per thread at 8 warps, enough bytes in flight
_MAX_BLOCK_N = 1024


def _tile(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)``: a 2-D tile of about ``_TILE_ELEMENTS`` elements.

    Short rows (``n`` of 1 or 7) get many rows per program so no lane idles on a
    1-wide tile; long rows are cut into column blocks of ``_MAX_BLOCK_N``.
    """
    block_n = min(triton.next_power_of_2(max(n_cols, 1)), _MAX_BLOCK_N)
    block_m = min(max(_TILE_ELEMENTS // block_n, 1), triton.next_power_of_2(max(n_rows, 1)))
    num_warps = 8 if block_m * block_n >= 4096 else 4
    return block_m, block_n, num_warps


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _act_and_grad(g, ACTIVATION: tl.constexpr):
    """``(act(g), act'(g))`` in fp32 for the activation code ``ACTIVATION``."""
    if ACTIVATION == 0:  # silu
        sig = tl.sigmoid(g)
        act = g * sig
        # d/dg g*s(g) = s + g*s*(1-s)
        grad = sig * (1.0 + g * (1.0 - sig))
    elif ACTIVATION == 1:  # exact gelu
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))  # 1/sqrt(2)
        act = g * cdf
        # d/dg g*Phi(g) = Phi(g) + g*phi(g), phi(g) = exp(-g^2/2)/sqrt(2 pi)
        grad = cdf + g * tl.exp(-0.5 * g * g) * 0.3989422804014327
    else:  # tanh gelu
        # (1 + tanh(z)) / 2 == sigmoid(2z): the same function without the cancellation of
        # 1 + tanh(z) for z << 0 (where it loses every digit in fp32), so the left tail is
        # accurate. z = sqrt(2/pi) (g + 0.044715 g^3).
        s = tl.sigmoid(1.5957691216057308 * (g + 0.044715 * g * g * g))  # 2 sqrt(2/pi)
        act = g * s
        # d/dg g*s(2z) = s + g * s(1-s) * 2 dz/dg, 2 dz/dg = 2 sqrt(2/pi) (1 + 3 * 0.044715 g^2)
        grad = s + g * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * g * g)
    return act, grad


@triton.jit
def _act(g, ACTIVATION: tl.constexpr):
    """``act(g)`` in fp32, without the derivative's extra work."""
    if ACTIVATION == 0:
        act = g * tl.sigmoid(g)
    elif ACTIVATION == 1:
        act = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    else:
        act = g * tl.sigmoid(1.5957691216057308 * (g + 0.044715 * g * g * g))
    return act


@triton.jit
def _row_offsets(rows, rows_inner, stride_outer, stride_inner):
    # Row r of the flattened leading dims sits at (r // inner) * s_outer + (r % inner) * s_inner.
    return (rows // rows_inner) * stride_outer + (rows % rows_inner) * stride_inner


@triton.jit
def _tile_coords(n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's rows (int64: rows x stride may pass 2**31), columns and in-bounds mask."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols, (rows < n_rows)[:, None] & (cols < n_cols)[None, :]


@triton.jit
def _load_tile(Ptr, rows, cols, mask, rows_inner, stride_outer, stride_inner, stride_col):
    """The (rows, cols) tile, in fp32, of a tensor read by strides (0 outside ``mask``)."""
    off = _row_offsets(rows, rows_inner, stride_outer, stride_inner)[:, None] + (cols * stride_col)[None, :]
    return tl.load(Ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_tile(Ptr, rows, cols, n_cols, value, mask):
    """Store the tile into a contiguous (rows, n_cols) output, cast to its dtype."""
    tl.store(Ptr + rows[:, None] * n_cols + cols[None, :], value.to(Ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _gated_act_fwd_kernel(
    Gate, Up, Out,
    n_rows, n_cols, rows_inner,
    stride_g_outer, stride_g_inner, stride_g_col,
    stride_u_outer, stride_u_inner, stride_u_col,
    ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, cols, mask = _tile_coords(n_rows, n_cols, BLOCK_M, BLOCK_N)
    g = _load_tile(Gate, rows, cols, mask, rows_inner, stride_g_outer, stride_g_inner, stride_g_col)
    u = _load_tile(Up, rows, cols, mask, rows_inner, stride_u_outer, stride_u_inner, stride_u_col)
    _store_tile(Out, rows, cols, n_cols, _act(g, ACTIVATION) * u, mask)


@triton.jit
def _gated_act_bwd_kernel(
    DOut, Gate, Up, DGate, DUp,
    n_rows, n_cols, rows_inner,
    stride_d_outer, stride_d_inner, stride_d_col,
    stride_g_outer, stride_g_inner, stride_g_col,
    stride_u_outer, stride_u_inner, stride_u_col,
    ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, cols, mask = _tile_coords(n_rows, n_cols, BLOCK_M, BLOCK_N)
    dout = _load_tile(DOut, rows, cols, mask, rows_inner, stride_d_outer, stride_d_inner, stride_d_col)
    g = _load_tile(Gate, rows, cols, mask, rows_inner, stride_g_outer, stride_g_inner, stride_g_col)
    u = _load_tile(Up, rows, cols, mask, rows_inner, stride_u_outer, stride_u_inner, stride_u_col)
    act, grad = _act_and_grad(g, ACTIVATION)  # recomputed: the forward saved no act(gate)
    _store_tile(DGate, rows, cols, n_cols, dout * u * grad, mask)
    _store_tile(DUp, rows, cols, n_cols, dout * act, mask)


@triton.jit
def _bias_gelu_fwd_kernel(
    X, Bias, Out,
    n_rows, n_cols, rows_inner,
    stride_x_outer, stride_x_inner, stride_x_col, stride_b,
    ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, cols, mask = _tile_coords(n_rows, n_cols, BLOCK_M, BLOCK_N)
    x = _load_tile(X, rows, cols, mask, rows_inner, stride_x_outer, stride_x_inner, stride_x_col)
    b = tl.load(Bias + cols * stride_b, mask=cols < n_cols, other=0.0).to(tl.float32)
    _store_tile(Out, rows, cols, n_cols, _act(x + b[None, :], ACTIVATION), mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    DOut, X, Bias, DX,
    n_rows, n_cols, rows_inner,
    stride_d_outer, stride_d_inner, stride_d_col,
    stride_x_outer, stride_x_inner, stride_x_col, stride_b,
    ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, cols, mask = _tile_coords(n_rows, n_cols, BLOCK_M, BLOCK_N)
    dout = _load_tile(DOut, rows, cols, mask, rows_inner, stride_d_outer, stride_d_inner, stride_d_col)
    x = _load_tile(X, rows, cols, mask, rows_inner, stride_x_outer, stride_x_inner, stride_x_col)
    b = tl.load(Bias + cols * stride_b, mask=cols < n_cols, other=0.0).to(tl.float32)
    _, grad = _act_and_grad(x + b[None, :], ACTIVATION)
    _store_tile(DX, rows, cols, n_cols, dout * grad, mask)


# --------------------------------------------------------------------------- launchers


def _merge(shape, strides):
    """``(size, stride)`` of dims that chain into one (``None`` if they don't)."""
    size, stride = 1, 0
    for n, s in zip(reversed(shape), reversed(strides)):
        if n == 1:
            continue
        if size > 1 and s != size * stride:
            return None
        if size == 1:
            stride = s
        size *= n
    return size, stride


def _split(t: torch.Tensor, p: int):
    """``(rows_inner, stride_outer, stride_inner)`` for leading dims ``[:p]`` x ``[p:-1]``."""
    outer = _merge(t.shape[:p], t.stride()[:p])
    inner = _merge(t.shape[p:-1], t.stride()[p:-1])
    if outer is None or inner is None:
        return None
    return inner[0], outer[1], inner[1]


def _rows(*tensors: torch.Tensor):
    """The leading dims of same-shape ``tensors`` as rows: ``(rows_inner, [(t, s_outer,
    s_inner), ...])``, row ``r`` of ``t`` at ``(r // rows_inner) * s_outer + (r %
    rows_inner) * s_inner``.

    Leading dims are split once into an outer and an inner group, each of which must
    chain (stride = next size x next stride) in every tensor. That covers contiguous
    tensors, row-strided views (``gate_up.chunk(2, -1)``) and slices of 3-D tensors
    (``x[:, :T]``) without a copy; a tensor more scattered than that is copied once
    (never the case for the public ops' usual inputs).
    """
    lead = tensors[0].dim() - 1
    for p in range(lead + 1):  # fewest outer dims first
        splits = [_split(t, p) for t in tensors]
        if all(s is not None for s in splits):
            return splits[0][0], [(t, s[1], s[2]) for t, s in zip(tensors, splits)]
    ts = [t if _split(t, 0) is not None else t.contiguous() for t in tensors]
    return _rows(*ts)


def _launch_grid(n_rows: int, n_cols: int):
    block_m, block_n, num_warps = _tile(n_rows, n_cols)
    return (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n)), block_m, block_n, num_warps


def gated_act_fwd(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate) * up`` for ``activation`` in :data:`GATED_ACTIVATIONS`.

    ``gate``, ``up``: ``(..., n)`` of one shape and dtype (fp16/bf16/fp32), any strides.
    Returns a contiguous ``(..., n)`` tensor of that dtype.
    """
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if out.numel() == 0:
        return out
    n_cols = gate.shape[-1]
    n_rows = out.numel() // n_cols
    rows_inner, ((g, sgo, sgi), (u, suo, sui)) = _rows(gate, up)
    grid, block_m, block_n, num_warps = _launch_grid(n_rows, n_cols)
    _gated_act_fwd_kernel[grid](
        g, u, out, n_rows, n_cols, rows_inner,
        sgo, sgi, g.stride(-1), suo, sui, u.stride(-1),
        ACTIVATION=GATED_ACTIVATIONS[activation], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return out


def gated_act_bwd(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str):
    """Gradients of ``act(gate) * up``: returns ``(dgate, dup)``, contiguous, ``gate``'s dtype.

    ``dgate = dout * up * act'(gate)``, ``dup = dout * act(gate)``; the activation is
    recomputed here from ``gate``. ``dout`` has ``gate``'s shape, any strides.
    """
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if dgate.numel() == 0:
        return dgate, dup
    n_cols = gate.shape[-1]
    n_rows = dgate.numel() // n_cols
    rows_inner, ((d, sdo, sdi), (g, sgo, sgi), (u, suo, sui)) = _rows(dout, gate, up)
    grid, block_m, block_n, num_warps = _launch_grid(n_rows, n_cols)
    _gated_act_bwd_kernel[grid](
        d, g, u, dgate, dup, n_rows, n_cols, rows_inner,
        sdo, sdi, d.stride(-1), sgo, sgi, g.stride(-1), suo, sui, u.stride(-1),
        ACTIVATION=GATED_ACTIVATIONS[activation], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return dgate, dup


def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """``gelu(x + bias, approximate)`` (``approximate`` "none" = erf, or "tanh").

    ``x`` ``(..., n)``, ``bias`` ``(n,)``, same dtype, any strides. Returns a contiguous
    tensor of ``x``'s shape and dtype.
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    n_cols = x.shape[-1]
    n_rows = out.numel() // n_cols
    rows_inner, ((xr, sxo, sxi),) = _rows(x)
    grid, block_m, block_n, num_warps = _launch_grid(n_rows, n_cols)
    _bias_gelu_fwd_kernel[grid](
        xr, bias, out, n_rows, n_cols, rows_inner, sxo, sxi, xr.stride(-1), bias.stride(0),
        ACTIVATION=GELU_APPROXIMATE[approximate], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return out


def bias_gelu_bwd(dout: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """``dx = dout * gelu'(x + bias)``, contiguous, ``x``'s shape and dtype.

    The bias gradient is ``dx`` summed over the leading dims (left to the caller, which
    reduces in fp32). ``gelu'`` is recomputed from ``x + bias``.
    """
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if dx.numel() == 0:
        return dx
    n_cols = x.shape[-1]
    n_rows = dx.numel() // n_cols
    rows_inner, ((d, sdo, sdi), (xr, sxo, sxi)) = _rows(dout, x)
    grid, block_m, block_n, num_warps = _launch_grid(n_rows, n_cols)
    _bias_gelu_bwd_kernel[grid](
        d, xr, bias, dx, n_rows, n_cols, rows_inner,
        sdo, sdi, d.stride(-1), sxo, sxi, xr.stride(-1), bias.stride(0),
        ACTIVATION=GELU_APPROXIMATE[approximate], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return dx


# --------------------------------------------------------------------------- ahead-of-time cases


def aot_cases():
    """Every kernel x activation for bf16 and fp32 at the full 4096-element tile
    (the register-heaviest one :func:`_tile` picks), plus the extreme tile shapes
    (``4096 x 1`` for ``n == 1``, ``64 x 64``) of the gated kernels in bf16."""
    from ._configs import AotCase, signature_for

    kernels = [
        ("gated_act_fwd", _gated_act_fwd_kernel, GATED_ACTIVATIONS, ("Gate", "Up", "Out")),
        ("gated_act_bwd", _gated_act_bwd_kernel, GATED_ACTIVATIONS, ("DOut", "Gate", "Up", "DGate", "DUp")),
        ("bias_gelu_fwd", _bias_gelu_fwd_kernel, {"erf": GEGLU, "tanh": GEGLU_TANH}, ("X", "Bias", "Out")),
        ("bias_gelu_bwd", _bias_gelu_bwd_kernel, {"erf": GEGLU, "tanh": GEGLU_TANH}, ("DOut", "X", "Bias", "DX")),
    ]
    dtypes = {"bf16": "*bf16", "fp32": "*fp32"}
    tiles = [(4, 1024, 8)]
    cases = []
    for name, fn, acts, pointers in kernels:
        for act_name, act in acts.items():
            for dtype, ptr in dtypes.items():
                extra = [(4096, 1, 8), (64, 64, 8)] if name.startswith("gated") and act == SWIGLU and dtype == "bf16" else []
                for block_m, block_n, warps in tiles + extra:
                    # As Triton's launcher specialises them: unit column strides, and
                    # 16-divisible pointers, row length and row strides.
                    constexprs = {n: 1 for n in fn.arg_names if n.endswith("_col")}
                    constexprs.update(ACTIVATION=act, BLOCK_M=block_m, BLOCK_N=block_n)
                    cases.append(AotCase(
                        kernel=name, fn=fn, signature=signature_for(fn, {}, ptr, constexprs=constexprs),
                        constexprs=constexprs, num_warps=warps, num_stages=1,
                        config=dict(activation=act_name, dtype=dtype, BLOCK_M=block_m, BLOCK_N=block_n),
                        divisible_by_16=pointers + ("n_cols",) + tuple(n for n in fn.arg_names if n.endswith("_inner")
                                                                      and n.startswith("stride")),
                    ))
    return cases
