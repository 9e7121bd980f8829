"""The gated MLP ``out = down(act(x @ w_gate.T) * (x @ w_up.T))`` with the activation
fused into the first GEMM, forward and backward.

Shapes (``nn.Linear`` weight layout): ``x`` ``(M, K)`` (``K`` = dim; leading dims are
flattened by the launcher), ``w_gate`` and ``w_up`` ``(N, K)`` (``N`` = hidden), ``w_down``
``(K_out, N)``. ``act`` is silu ("swiglu"), exact GELU ("geglu") or tanh GELU
("geglu_tanh"); all the math of :mod:`.activations`.

Forward. One Triton GEMM walks ``K`` once and keeps two fp32 accumulators per tile,
``G = x @ w_gate.T`` and ``U = x @ w_up.T``, loading the ``x`` tile once for both. The
gate and up weights come as two pointers with their own strides, so the ``(2N, K)``
``gate_up_proj`` of Phi-3 (two row-slices of one tensor) and Llama's separate
``gate_proj``/``up_proj`` are both read in place, never concatenated. The epilogue
computes ``H = act(G) * U`` in fp32 and writes only ``H``: the pre-activations ``G`` and
``U`` never reach memory. The down projection ``H @ w_down.T`` is ``torch.matmul``:
it is a plain GEMM with nothing to fuse, and cuBLAS/cuBLASLt is at least as fast as a
Triton GEMM there (and it runs natively on CPU tensors), so a second Triton GEMM would
add tuning surface and no speed.

Backward. Given ``dO`` ``(M, K_out)`` and the saved ``x`` and ``H``, one Triton kernel
recomputes the ``G`` and ``U`` tiles (a second pass of the first GEMM, ``2 M N K``
FLOPs) and, in the same tile, ``dH = dO @ w_down`` (a third accumulator), then writes
``dG = dH * U * act'(G)`` and ``dU = dH * act(G)``. The rest are plain GEMMs in torch:
``dw_down = dO.T @ H``, ``dx = dG @ w_gate + dU @ w_up``, ``dw_gate = dG.T @ x``,
``dw_up = dU.T @ x``.

Memory. Between forward and backward the op keeps ``x`` and ``H`` (plus the weights,
which are parameters anyway): ``M (K + N)`` elements. Eager PyTorch
(``F.silu(x @ wg.T) * (x @ wu.T)`` then a linear) keeps ``x``, ``G``, ``U``, ``silu(G)``
and ``H``: ``M (K + 4 N)``; a fused activation kernel without the GEMM epilogue still
keeps ``G``, ``U`` and ``H``: ``M (K + 3 N)``. For a Llama-7B MLP (``K`` 4096, ``N``
11008) that is 2 x 11008 x 2 bytes = 43 KB per token less than the fused-activation
scheme and 64.5 KB per token less than eager (bf16): 2.9 GB and 4.3 GB for a 64k-token
batch. The forward also allocates only ``H`` and the output: the ``2 M N`` elements of
``G`` and ``U`` are never allocated at all. The price is the recompute GEMM in backward
(``2 M N K`` FLOPs on top of the usual ``12 M N K``).

Configs are autotuned per ``(N, K, M bucket, dtype)`` among per-arch candidate lists
(sm_80 family / sm_90, 16-bit / fp32 operands), pruned by the shared memory per block of
the running GPU (sm_80 163 KB, sm_86/89 99 KB, sm_90 227 KB). fp32 inputs use exact fp32
dots (``input_precision="ieee"``) unless ``torch.backends.cuda.matmul.allow_tf32`` is set,
as ``torch.matmul`` does. :func:`aot_cases` lists every config each arch keeps; the
ahead-of-time check compiles them all for sm_80 and sm_90 and requires no spills.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._configs import shared_memory_limit
from .activations import GATED_ACTIVATIONS, _act, _act_and_grad

# Candidate (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per arch family (80: sm_80,
# sm_86, sm_89, pruned further by their shared memory; 90: sm_90) and operand width in
# bytes. Each was compiled ahead of time for its archs and kept only if ptxas reports no
# spill (aot_cases; see fastattn.buildcheck.triton_aot). Big tiles serve
# prefill, BLOCK_M 16/32 decode-sized M. sm_80's mma.sync holds its operands in registers,
# so two 128 x 64 fp32 accumulators already need 8 warps there, while sm_90's wgmma reads
# them from shared memory and takes 128 x 128. fp32 operands take small tiles: exact fp32
# dots ("ieee") are FMA loops whose operands live in registers.
_FWD_SHAPES = {
    (80, 2): [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 128, 64, 8, 3), (64, 64, 32, 4, 3),
              (32, 64, 64, 4, 4), (32, 64, 128, 4, 3), (16, 64, 128, 4, 3)],
    (90, 2): [(128, 128, 32, 8, 3), (128, 64, 64, 8, 4), (64, 128, 64, 8, 4), (64, 128, 64, 4, 4),
              (64, 64, 64, 4, 5), (64, 64, 32, 4, 3), (32, 64, 128, 4, 3), (16, 64, 128, 4, 4)],
    (80, 4): [(64, 32, 32, 4, 3), (32, 32, 32, 4, 3), (16, 64, 32, 4, 3), (32, 32, 32, 4, 2)],
    (90, 4): [(32, 64, 32, 4, 3), (32, 32, 32, 4, 3), (16, 64, 32, 4, 2), (32, 32, 32, 4, 2)],
}
# Three fp32 accumulators (G, U, dH) per tile: 128 x 128 would not fit the register file.
_BWD_16 = [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 64, 64, 8, 3), (64, 64, 64, 4, 3),
           (64, 64, 32, 4, 4), (32, 64, 64, 4, 3), (16, 64, 64, 4, 3)]
_BWD_SHAPES = {
    (80, 2): _BWD_16,
    (90, 2): _BWD_16,
    (80, 4): [(64, 32, 32, 4, 3), (32, 64, 32, 4, 3), (32, 32, 32, 4, 3), (16, 64, 32, 4, 3)],
    (90, 4): [(32, 32, 32, 4, 3), (16, 64, 32, 4, 3), (32, 32, 32, 4, 2), (16, 64, 32, 4, 2)],
}
# Under the interpreter every program is numpy work: one big tile beats tuning.
_INTERPRETER_SHAPE = (64, 64, 64, 4, 1)


def _config(shape) -> triton.Config:
    bm, bn, bk, warps, stages = shape
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages)


def _shape(config: triton.Config) -> tuple:
    kw = config.kwargs
    return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages


def all_shapes(table: dict) -> list[tuple]:
    """Every candidate of ``table`` once, in a stable order (the autotuner's config list)."""
    return list(dict.fromkeys(s for shapes in table.values() for s in shapes))


def smem_bytes(shape, elem_bytes: int) -> int:
    """Shared memory the software pipeline may take: ``num_stages`` copies of the ``x`` tile
    and the two weight tiles (the forward's K loop and the backward's larger first loop).
    Compiled kernels use at most this (sm_80 keeps ``num_stages - 1`` copies)."""
    bm, bn, bk, _, stages = shape
    return stages * (bm + 2 * bn) * bk * elem_bytes


def candidate_shapes(table: dict, capability: int, elem_bytes: int) -> list[tuple]:
    """The shapes ``table`` lists for ``capability`` and operand width that fit its shared memory."""
    try:
        limit = shared_memory_limit(capability)
    except KeyError:  # an arch the package does not target: assume the smallest
        limit = shared_memory_limit(86)
    family = 90 if capability >= 90 else 80
    width = 4 if elem_bytes >= 4 else 2
    return [s for s in table[(family, width)] if smem_bytes(s, elem_bytes) <= limit]


@functools.lru_cache(maxsize=None)
def _device_capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor


def _pruner(table: dict):
    """An autotuner ``early_config_prune`` keeping ``table``'s candidates for this GPU and dtype."""

    def prune(configs, nargs, **kwargs):
        x = nargs["X"]
        if triton.knobs.runtime.interpret or x.device.type != "cuda":
            return [_config(_INTERPRETER_SHAPE)]
        wanted = set(candidate_shapes(table, _device_capability(x.device.index or 0), x.element_size()))
        return [c for c in configs if _shape(c) in wanted] or configs[-1:]

    return prune


def _interpreter_fixes() -> None:
    """Under ``TRITON_INTERPRET=1``, correct the interpreter's ``tl.dot`` on bf16 inputs
    (it multiplies the raw 16-bit patterns) before the first launch."""
    if triton.knobs.runtime.interpret:
        from ._interpreter import ensure_interpreter_fixes

        ensure_interpreter_fixes()


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering (Triton matmul tutorial): GROUP_M row-tiles share each weight
    # column-tile while it is hot in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    return pid_m, pid_n


@triton.jit
def _gate_up_tiles(
    X, WG, WU, offs_m, offs_n, M, N, K,
    stride_xm, stride_xk, stride_gn, stride_gk, stride_un, stride_uk,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """fp32 ``(x @ w_gate.T, x @ w_up.T)`` for one ``BLOCK_M x BLOCK_N`` tile."""
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    # Weight tiles are read transposed, (K, N), straight from the (N, K) layout.
    g_ptrs = WG + offs_k[:, None] * stride_gk + offs_n[None, :] * stride_gn
    u_ptrs = WU + offs_k[:, None] * stride_uk + offs_n[None, :] * stride_un
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        # Zero-filled tails: ragged K (dim 40, 129) adds exact zeros to the dot.
        x = tl.load(x_ptrs, mask=m_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        wg = tl.load(g_ptrs, mask=(offs_k[:, None] < k_left) & n_mask[None, :], other=0.0)
        wu = tl.load(u_ptrs, mask=(offs_k[:, None] < k_left) & n_mask[None, :], other=0.0)
        acc_g = tl.dot(x, wg, acc_g, input_precision=DOT_PRECISION)
        acc_u = tl.dot(x, wu, acc_u, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        g_ptrs += BLOCK_K * stride_gk
        u_ptrs += BLOCK_K * stride_uk
    return acc_g, acc_u


# --------------------------------------------------------------------------- kernels


@triton.autotune(configs=[_config(s) for s in all_shapes(_FWD_SHAPES)], key=["N", "K", "M_BUCKET"],
                 prune_configs_by={"early_config_prune": _pruner(_FWD_SHAPES)})
@triton.jit
def _ffn_gate_up_fwd_kernel(
    X, WG, WU, H,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_gn, stride_gk, stride_un, stride_uk, stride_hm,
    ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``H = act(X @ WG.T) * (X @ WU.T)``; ``G``/``U`` live only in registers."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_g, acc_u = _gate_up_tiles(
        X, WG, WU, offs_m, offs_n, M, N, K, stride_xm, stride_xk, stride_gn, stride_gk, stride_un, stride_uk,
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )
    h = _act(acc_g, ACTIVATION) * acc_u
    h_ptrs = H + offs_m[:, None] * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(H.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.autotune(configs=[_config(s) for s in all_shapes(_BWD_SHAPES)], key=["N", "K", "K_OUT", "M_BUCKET"],
                 prune_configs_by={"early_config_prune": _pruner(_BWD_SHAPES)})
@triton.jit
def _ffn_gate_up_bwd_kernel(
    X, DO, WG, WU, WD, DG, DU,
    M, N, K, K_OUT, M_BUCKET,
    stride_xm, stride_xk, stride_gn, stride_gk, stride_un, stride_uk,
    stride_dom, stride_dok, stride_wdk, stride_wdn, stride_dgm,
    ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``dG = dH * U * act'(G)``, ``dU = dH * act(G)`` with ``G``, ``U`` recomputed and
    ``dH = DO @ WD`` computed in the same tile."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # dH first, while only one accumulator is live, then the recompute.
    offs_k = tl.arange(0, BLOCK_K)
    do_ptrs = DO + offs_m[:, None] * stride_dom + offs_k[None, :] * stride_dok
    wd_ptrs = WD + offs_k[:, None] * stride_wdk + offs_n[None, :] * stride_wdn
    acc_dh = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K_OUT, BLOCK_K)):
        k_left = K_OUT - k * BLOCK_K
        do = tl.load(do_ptrs, mask=m_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        wd = tl.load(wd_ptrs, mask=(offs_k[:, None] < k_left) & n_mask[None, :], other=0.0)
        acc_dh = tl.dot(do, wd, acc_dh, input_precision=DOT_PRECISION)
        do_ptrs += BLOCK_K * stride_dok
        wd_ptrs += BLOCK_K * stride_wdk
    acc_g, acc_u = _gate_up_tiles(
        X, WG, WU, offs_m, offs_n, M, N, K, stride_xm, stride_xk, stride_gn, stride_gk, stride_un, stride_uk,
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )
    act, grad = _act_and_grad(acc_g, ACTIVATION)
    mask = m_mask[:, None] & n_mask[None, :]
    out_offs = offs_m[:, None] * stride_dgm + offs_n[None, :]
    tl.store(DG + out_offs, (acc_dh * acc_u * grad).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + out_offs, (acc_dh * act).to(DU.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 GEMMs follow torch's switch: full fp32 ("ieee") unless TF32 was allowed.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _grid(meta, M, N):
    return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


def gate_up_fwd(x2: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(x2 @ w_gate.T) * (x2 @ w_up.T)``: ``x2`` ``(M, K)``, weights ``(N, K)``, any
    strides; returns a contiguous ``(M, N)`` tensor of ``x2``'s dtype."""
    M, K = x2.shape
    N = w_gate.shape[0]
    h = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    if M == 0 or N == 0:
        return h
    _interpreter_fixes()
    _ffn_gate_up_fwd_kernel[lambda meta: _grid(meta, M, N)](
        x2, w_gate, w_up, h, M, N, K, triton.next_power_of_2(M),
        x2.stride(0), x2.stride(1), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1), h.stride(0),
        ACTIVATION=GATED_ACTIVATIONS[activation], DOT_PRECISION=_dot_precision(x2.dtype),
    )
    return h


def gate_up_bwd(dout2, x2, w_gate, w_up, w_down, activation: str):
    """``(dG, dU)``, each ``(M, N)`` contiguous: gradients w.r.t. the recomputed
    pre-activations, from ``dout2`` ``(M, K_out)`` through ``w_down`` ``(K_out, N)``."""
    M, K = x2.shape
    N = w_gate.shape[0]
    K_out = w_down.shape[0]
    dg = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    du = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    if M == 0 or N == 0:
        return dg, du
    _interpreter_fixes()
    _ffn_gate_up_bwd_kernel[lambda meta: _grid(meta, M, N)](
        x2, dout2, w_gate, w_up, w_down, dg, du, M, N, K, K_out, triton.next_power_of_2(M),
        x2.stride(0), x2.stride(1), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1),
        dout2.stride(0), dout2.stride(1), w_down.stride(0), w_down.stride(1), dg.stride(0),
        ACTIVATION=GATED_ACTIVATIONS[activation], DOT_PRECISION=_dot_precision(x2.dtype),
    )
    return dg, du


def feed_forward_fwd(x, w_gate, w_up, w_down, activation: str, residuals: str = "hidden"):
    """The gated MLP forward: ``x`` ``(..., K)``, ``w_gate``/``w_up`` ``(N, K)``,
    ``w_down`` ``(K_out, N)``, one dtype. Returns ``(out (..., K_out), res_a, res_b)``: for
    ``residuals="hidden"`` ``res_a = hidden = act(x @ w_gate.T) * (x @ w_up.T)`` ``(..., N)``,
    what the backward needs; for ``"none"`` (no backward follows) both are empty. ``G`` and
    ``U`` never leave the registers, so ``"gate_up"`` is not this kernel's (ValueError)."""
    if residuals not in ("hidden", "none"):
        raise ValueError(f"residuals must be 'hidden' or 'none' for the Triton feed-forward, got {residuals!r}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # a view unless the leading dims don't chain
    h = gate_up_fwd(x2, w_gate, w_up, activation)
    out = torch.matmul(h, w_down.t()).reshape(*lead, w_down.shape[0])
    if residuals == "none":  # two distinct empty tensors: a custom op's outputs may not alias
        return out, x.new_empty(0), x.new_empty(0)
    return out, h.reshape(*lead, w_gate.shape[0]), x.new_empty(0)


def feed_forward_bwd(dout, x, w_gate, w_up, w_down, hidden, unused, activation: str, residuals: str = "hidden"):
    """The gated MLP backward from the ``"hidden"`` residuals (``hidden``; ``unused`` is the
    empty second residual): returns ``(dx, dw_gate, dw_up, dw_down)`` in the shapes and dtype
    of ``x`` and the weights. ``G``/``U`` are recomputed, not read."""
    if residuals != "hidden":
        raise ValueError(f"the Triton feed-forward backward takes residuals='hidden', got {residuals!r}")
    x2 = x.reshape(-1, x.shape[-1])
    d2 = dout.reshape(-1, dout.shape[-1])
    h2 = hidden.reshape(-1, hidden.shape[-1])
    dg, du = gate_up_bwd(d2, x2, w_gate, w_up, w_down, activation)
    dw_down = torch.matmul(d2.t(), h2)
    dx = torch.matmul(dg, w_gate)
    dx.addmm_(du, w_up)
    dw_gate = torch.matmul(dg.t(), x2)
    dw_up = torch.matmul(du.t(), x2)
    return dx.reshape(x.shape), dw_gate, dw_up, dw_down


# --------------------------------------------------------------------------- ahead-of-time cases


def aot_cases():
    """Every candidate the autotuner may keep, per arch: bf16 and fp32 operands (fp32's
    ``ieee`` dots and doubled tiles make a different kernel) with each activation's
    epilogue. A case lists the archs that keep it."""
    from ._configs import ARCHS, AotCase, signature_for

    sizes = {n: "i32" for n in ("M", "N", "K", "K_OUT", "M_BUCKET")}  # upper-case, yet not pointers
    kernels = [
        ("feed_forward_gate_up_fwd", _ffn_gate_up_fwd_kernel.fn, _FWD_SHAPES,
         ("X", "WG", "WU", "H", "stride_xm", "stride_gn", "stride_un", "stride_hm", "K")),
        ("feed_forward_gate_up_bwd", _ffn_gate_up_bwd_kernel.fn, _BWD_SHAPES,
         ("X", "DO", "WG", "WU", "WD", "DG", "DU", "stride_xm", "stride_gn", "stride_un", "stride_dom",
          "stride_wdk", "stride_dgm", "K", "K_OUT")),
    ]
    # bf16 stands for both 16-bit types (fp16 differs only in the conversion instructions).
    variants = [(dtype, f"*{dtype}", activation, precision, elem_bytes)
                for dtype, precision, elem_bytes in (("bf16", "tf32", 2), ("fp32", "ieee", 4))
                for activation in GATED_ACTIVATIONS]
    cases = []
    for name, fn, table, divisible in kernels:
        for dtype, ptr, activation, precision, elem_bytes in variants:
            kept: dict[tuple, list[int]] = {}
            for arch in ARCHS:
                for shape in candidate_shapes(table, arch, elem_bytes):
                    kept.setdefault(shape, []).append(arch)
            for shape, archs in kept.items():
                config = _config(shape)
                # Unit inner strides are specialised by Triton's launcher, as here.
                constexprs = {n: 1 for n in ("stride_xk", "stride_gk", "stride_uk", "stride_dok", "stride_wdn")
                              if n in fn.arg_names}
                constexprs.update(config.kwargs, ACTIVATION=GATED_ACTIVATIONS[activation], DOT_PRECISION=precision)
                cases.append(AotCase(
                    kernel=name, fn=fn, signature=signature_for(fn, sizes, ptr, constexprs=constexprs),
                    constexprs=constexprs, num_warps=config.num_warps, num_stages=config.num_stages,
                    config=dict(config.kwargs, dtype=dtype, activation=activation),
                    divisible_by_16=divisible, archs=tuple(archs),
                ))
    return cases
