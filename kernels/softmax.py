"""Fused scale, mask and softmax over the last dim (Megatron-LM ``FusedScaleMaskSoftmax``) in Triton.

Math, for one row ``x`` of ``scores`` ``(..., Lq, Lk)`` (query row ``i``)::

    s_j = scale * x_j (+ mask_j for a float mask)      -inf where hidden
    hidden: bool mask True (Megatron's convention: True = masked out), or j > i if causal
    y_j = exp(s_j - max s) / sum_k exp(s_k - max s)    (a row with every j hidden gives y = 0)

computed in fp32 and stored in the input dtype. Backward (``y`` saved from the forward)::

    dx_j = scale * y_j * (dy_j - sum_k dy_k y_k)

One program per row. A row that fits ``MAX_ROW_BLOCK`` columns is held in registers in one
``BLOCK_N`` tile (one read, one write: the minimum traffic); a longer row is streamed twice
in ``LOOP_BLOCK`` chunks: pass 1 keeps an *online* max and sum (the sum is rescaled by
``exp(m_old - m_new)`` whenever the max grows, Milakov and Gimelshein, "Online normalizer
calculation for softmax", 2018), pass 2 recomputes each chunk and writes it normalised.
Exponentials are ``exp2`` of ``log2(e)``-scaled scores (one multiply folded into the scale).

Tensors are taken as 4-D ``(B, H, Lq, Lk)`` views by strides; the mask is broadcast to the
scores by zero strides (no expanded copy). Positions hidden by the mask or the causal
rule are never read from ``scores``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpreter import ensure_interpreter_fixes

__all__ = ["softmax_fwd", "softmax_bwd", "row_config", "MAX_ROW_BLOCK", "LOOP_BLOCK"]

MAX_ROW_BLOCK = 16384
"""Longest row held in registers by one program (16 warps x 32 fp32 values a thread)."""
LOOP_BLOCK = 4096
"""Chunk of the two-pass kernel for rows longer than :data:`MAX_ROW_BLOCK`."""
LOOP_WARPS = 8
_MASK_MODES = {None: 0, torch.bool: 1}  # else 2: a float mask, added after scaling


def row_config(seqlen_k: int) -> tuple[int, int, bool]:
    """``(BLOCK_N, num_warps, LOOP)`` for rows of ``seqlen_k`` columns.

    One tile covering the row when it fits, with about 16 elements a thread (at least one
    warp, at most 16); otherwise the two-pass kernel over ``LOOP_BLOCK`` chunks.
    """
    if seqlen_k > MAX_ROW_BLOCK:
        return LOOP_BLOCK, LOOP_WARPS, True
    block = triton.next_power_of_2(max(seqlen_k, 1))
    return block, min(16, max(1, block // 512)), False


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _program_row(heads, seqlen_q):
    """``(b, h, i)`` of the row this program owns (one program a row, rows in (B, H, Lq) order), int64."""
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // seqlen_q
    return bh // heads, bh % heads, pid % seqlen_q


@triton.jit
def _row_start(Ptr, off_b, off_h, row, stride_b, stride_h, stride_m):
    """The address of row ``(b, h, i)`` of a 4-D tensor read by strides."""
    return Ptr + off_b * stride_b + off_h * stride_h + row * stride_m


@triton.jit
def _load_scaled(x_row, m_row, cols, row, seqlen_k, stride_xn, stride_mn, scale_log2,
                 MASK_MODE: tl.constexpr, CAUSAL: tl.constexpr):
    """Base-2 scores ``log2(e) * (scale * x + mask)`` of the columns ``cols``, -inf where hidden."""
    ok = cols < seqlen_k
    if CAUSAL:
        ok = ok & (cols <= row)  # top-left aligned: row i sees columns 0..i
    if MASK_MODE == 1:
        hidden = tl.load(m_row + cols * stride_mn, mask=ok, other=0).to(tl.int1)
        ok = ok & (hidden == 0)
    # Hidden positions are not read (other=0), so a NaN or garbage there never leaks in.
    s = tl.load(x_row + cols * stride_xn, mask=ok, other=0.0).to(tl.float32) * scale_log2
    if MASK_MODE == 2:
        m = tl.load(m_row + cols * stride_mn, mask=ok, other=0.0).to(tl.float32)
        # A finite mask value is a number, as torch adds it: log2(e) * finfo(float32).min
        # overflows to -inf, which would hide the column, so the product saturates at
        # +-FLT_MAX instead (a row of such scores is uniform, as torch's softmax makes it).
        mt = m * 1.4426950408889634
        sat = tl.where(m < 0, -3.4028234663852886e38, 3.4028234663852886e38)
        s += tl.where((tl.abs(mt) == float("inf")) & (tl.abs(m) != float("inf")), sat, mt)
    return tl.where(ok, s, float("-inf"))


# --------------------------------------------------------------------------- kernels


@triton.jit
def _softmax_fwd_kernel(
    X, Y, Mask,
    stride_xb, stride_xh, stride_xm, stride_xn,
    stride_yb, stride_yh, stride_ym, stride_yn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    heads, seqlen_q, seqlen_k, scale,
    MASK_MODE: tl.constexpr, CAUSAL: tl.constexpr, LOOP: tl.constexpr, BLOCK_N: tl.constexpr,
):
    off_b, off_h, row = _program_row(heads, seqlen_q)
    x_row = _row_start(X, off_b, off_h, row, stride_xb, stride_xh, stride_xm)
    y_row = _row_start(Y, off_b, off_h, row, stride_yb, stride_yh, stride_ym)
    m_row = Mask
    if MASK_MODE != 0:
        m_row = Mask + off_b * stride_mb + off_h * stride_mh + row * stride_mm
    scale_log2 = scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    offs = tl.arange(0, BLOCK_N)
    if not LOOP:
        s = _load_scaled(x_row, m_row, offs, row, seqlen_k, stride_xn, stride_mn, scale_log2, MASK_MODE, CAUSAL)
        m = tl.max(s, 0)
        # A fully hidden row has max -inf: subtract 0 instead so exp2 gives 0 (not NaN), and y = 0.
        e = tl.math.exp2(s - tl.where(m == float("-inf"), 0.0, m))
        total = tl.sum(e, 0)
        y = e / tl.where(total == 0.0, 1.0, total)
        tl.store(y_row + offs * stride_yn, y.to(Y.dtype.element_ty), mask=offs < seqlen_k)
    else:
        hi = seqlen_k
        if CAUSAL:
            hi = tl.minimum(seqlen_k, row + 1)  # columns past the diagonal cannot contribute
        m_i = tl.full([], float("-inf"), tl.float32)
        l_i = tl.zeros([], tl.float32)
        for start in range(0, hi, BLOCK_N):
            s = _load_scaled(x_row, m_row, start + offs, row, seqlen_k, stride_xn, stride_mn, scale_log2,
                             MASK_MODE, CAUSAL)
            m_new = tl.maximum(m_i, tl.max(s, 0))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            # Online normaliser: rescale the running sum to the new max before adding this chunk.
            l_i = l_i * tl.math.exp2(m_i - m_sub) + tl.sum(tl.math.exp2(s - m_sub), 0)
            m_i = m_new
        m_sub = tl.where(m_i == float("-inf"), 0.0, m_i)
        inv = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)
        for start in range(0, seqlen_k, BLOCK_N):
            cols = start + offs
            s = _load_scaled(x_row, m_row, cols, row, seqlen_k, stride_xn, stride_mn, scale_log2, MASK_MODE, CAUSAL)
            y = tl.math.exp2(s - m_sub) * inv
            tl.store(y_row + cols * stride_yn, y.to(Y.dtype.element_ty), mask=cols < seqlen_k)


@triton.jit
def _softmax_bwd_kernel(
    DY, Y, DX,
    stride_db, stride_dh, stride_dm, stride_dn,
    stride_yb, stride_yh, stride_ym, stride_yn,
    stride_xb, stride_xh, stride_xm, stride_xn,
    heads, seqlen_q, seqlen_k, scale,
    LOOP: tl.constexpr, BLOCK_N: tl.constexpr,
):
    off_b, off_h, row = _program_row(heads, seqlen_q)
    dy_row = _row_start(DY, off_b, off_h, row, stride_db, stride_dh, stride_dm)
    y_row = _row_start(Y, off_b, off_h, row, stride_yb, stride_yh, stride_ym)
    dx_row = _row_start(DX, off_b, off_h, row, stride_xb, stride_xh, stride_xm)
    offs = tl.arange(0, BLOCK_N)
    if not LOOP:
        ok = offs < seqlen_k
        y = tl.load(y_row + offs * stride_yn, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + offs * stride_dn, mask=ok, other=0.0).to(tl.float32)
        dot = tl.sum(y * dy, 0)
        tl.store(dx_row + offs * stride_xn, (scale * y * (dy - dot)).to(DX.dtype.element_ty), mask=ok)
    else:
        dot = tl.zeros([], tl.float32)
        for start in range(0, seqlen_k, BLOCK_N):
            ok = start + offs < seqlen_k
            y = tl.load(y_row + (start + offs) * stride_yn, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + (start + offs) * stride_dn, mask=ok, other=0.0).to(tl.float32)
            dot += tl.sum(y * dy, 0)
        for start in range(0, seqlen_k, BLOCK_N):
            ok = start + offs < seqlen_k
            y = tl.load(y_row + (start + offs) * stride_yn, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + (start + offs) * stride_dn, mask=ok, other=0.0).to(tl.float32)
            tl.store(dx_row + (start + offs) * stride_xn, (scale * y * (dy - dot)).to(DX.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- launchers


def _as4d(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(..., Lq, Lk)`` as a ``(B, H, Lq, Lk)`` view (a copy only when > 4 leading dims
    cannot be merged by a view)."""
    if t.dim() < 4:
        return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if t.dim() == 4:
        return t
    shape = (-1, *t.shape[-3:])
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape)


def _output_like(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the tensor to return, its 4-D view the kernel writes): ``empty_like`` (as the op's fake
    does), or a dense buffer when its layout has no 4-D view (> 4 dims, unmergeable)."""
    out = torch.empty_like(t)
    if out.dim() <= 4:
        return out, _as4d(out)
    try:
        return out, out.view(-1, *out.shape[-3:])
    except RuntimeError:
        out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        return out, out.view(-1, *out.shape[-3:])


def softmax_fwd(scores: torch.Tensor, mask, scale: float, causal: bool) -> torch.Tensor:
    """``softmax(scale * scores [+ mask], hidden -> -inf)`` over the last dim.

    Args:
        scores: ``(..., Lq, Lk)`` fp16/bf16/fp32, any strides.
        mask: ``None``, bool (True = masked out) or float of ``scores``' dtype (added after
            scaling), broadcastable to ``scores``.
        scale: multiplies the scores first. causal: also hide ``j > i``.

    Returns:
        Probabilities of ``scores``' shape and dtype (computed in fp32); fully hidden rows are 0.
    """
    ensure_interpreter_fixes()
    out, y = _output_like(scores)
    if scores.numel() == 0:
        return out
    x = _as4d(scores)
    mask_mode, mk, mstrides = 0, x, (0, 0, 0, 0)
    if mask is not None:
        mask_mode = _MASK_MODES.get(mask.dtype, 2)
        mk = _as4d(torch.broadcast_to(mask, scores.shape))  # zero strides, no copy (<= 4 dims)
        mstrides = mk.stride()
    b, h, lq, lk = x.shape
    block, warps, loop = row_config(lk)
    _softmax_fwd_kernel[(b * h * lq,)](
        x, y, mk, *x.stride(), *y.stride(), *mstrides, h, lq, lk, float(scale),
        MASK_MODE=mask_mode, CAUSAL=bool(causal), LOOP=loop, BLOCK_N=block, num_warps=warps,
    )
    return out


def softmax_bwd(dprobs: torch.Tensor, probs: torch.Tensor, scale: float) -> torch.Tensor:
    """``dscores = scale * y * (dy - sum(dy * y))`` over the last dim; shaped like ``probs``."""
    ensure_interpreter_fixes()
    out, dx = _output_like(probs)
    if probs.numel() == 0:
        return out
    dy, y = _as4d(dprobs), _as4d(probs)
    b, h, lq, lk = y.shape
    block, warps, loop = row_config(lk)
    _softmax_bwd_kernel[(b * h * lq,)](
        dy, y, dx, *dy.stride(), *y.stride(), *dx.stride(), h, lq, lk, float(scale),
        LOOP=loop, BLOCK_N=block, num_warps=warps,
    )
    return out


# --------------------------------------------------------------------------- ahead-of-time cases

_AOT_DTYPES = ("fp16", "fp32")  # bf16 compiles to the same tiles and register footprint as fp16
# Forward flags (MASK_MODE, CAUSAL) beyond the bool mask + causal compiled at every tile, at a
# representative set of fp16 tiles: one warp (rows up to 512, no cross-warp reduction), 4 warps
# (the 16-values-a-thread tiles 1024..8192 reduce through shared memory), the largest
# single-pass tile (32 values a thread) and the looped kernel.
_AOT_EXTRA_FLAGS = ((0, False), (1, False), (2, True))
_AOT_EXTRA_TILES = (512, 2048, MAX_ROW_BLOCK, "loop")


def _aot_fwd_case(dname: str, block: int, warps: int, loop: bool, mask_mode: int, causal: bool):
    """The forward kernel as :func:`softmax_fwd` launches it for this tile and these flags."""
    from ._configs import AotCase, signature_for

    fn = _softmax_fwd_kernel
    const = dict(MASK_MODE=mask_mode, CAUSAL=causal, LOOP=loop, BLOCK_N=block, stride_xn=1, stride_yn=1)
    if mask_mode:
        const["stride_mn"] = 1
    # Without a mask the launcher passes the scores again as the (unread) mask, with zero strides.
    mask_ptr = "*i1" if mask_mode == 1 else f"*{dname}"
    return AotCase(
        kernel="softmax_fwd", fn=fn,
        signature=signature_for(fn, {"Mask": mask_ptr}, f"*{dname}", floats=("scale",), constexprs=const),
        constexprs=const, num_warps=warps, num_stages=1,
        config=dict(dtype=dname, BLOCK_N=block, LOOP=loop, MASK_MODE=mask_mode, CAUSAL=causal),
        divisible_by_16=("X", "Y", "Mask", "stride_xm", "stride_ym"),
    )


def aot_cases() -> list:
    """Every ``BLOCK_N``/``num_warps`` :func:`row_config` can pick (tiles 1..16384 and the
    looped kernel), forward and backward, in fp16 and fp32, for buildcheck/triton_aot.py. The forward
    is specialised at every tile with its heaviest flags (a bool mask and causal), plus a
    float mask at the 4096 and 16384 tiles and the looped kernel; and, in fp16 at the
    representative tiles of ``_AOT_EXTRA_TILES``, with no mask, a bool mask without causal and
    a float mask with causal. Unit column strides, as Triton's launcher specialises a stride of 1."""
    from ._configs import AotCase, signature_for

    tiles = [(1 << p, min(16, max(1, (1 << p) // 512)), False) for p in range(15)] + \
            [(LOOP_BLOCK, LOOP_WARPS, True)]
    cases = []
    for dname in _AOT_DTYPES:
        for block, warps, loop in tiles:
            fwd_flags = [(1, True)] + ([(2, False)] if block in (MAX_ROW_BLOCK, LOOP_BLOCK) else [])
            if dname == "fp16" and ("loop" if loop else block) in _AOT_EXTRA_TILES:
                fwd_flags += list(_AOT_EXTRA_FLAGS)
            for mask_mode, causal in fwd_flags:
                cases.append(_aot_fwd_case(dname, block, warps, loop, mask_mode, causal))
            fn = _softmax_bwd_kernel
            const = dict(LOOP=loop, BLOCK_N=block, stride_dn=1, stride_yn=1, stride_xn=1)
            cases.append(AotCase(
                kernel="softmax_bwd", fn=fn,
                signature=signature_for(fn, {}, f"*{dname}", floats=("scale",), constexprs=const),
                constexprs=const, num_warps=warps, num_stages=1,
                config=dict(dtype=dname, BLOCK_N=block, LOOP=loop),
                divisible_by_16=("DY", "Y", "DX", "stride_dm", "stride_ym", "stride_xm"),
            ))
    return cases
