"""The ``cpu`` backend's fused bias-GELU and gated MLP (fastattn.backends.cpu.ffn, the native
kernels of csrc/cpu/activations.cpp) against fastattn.reference in float64.

fp32 must match to 1e-5 of the output's scale; fp16/bf16 by flash-attn's rule: max|out -
ref64| <= 2 max|ref_lowp - ref64| + floor, with ref_lowp the same math (reference and its
autograd) evaluated in the input dtype. Gradients go through the public ops and autograd.
Every ``torch.empty`` the backend calls returns NaN-filled memory, so an output element or
a scratch element left unwritten fails; inputs are fresh random draws from a per-test seed.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import fastattn
from fastattn import dispatch, reference, testing
from fastattn.backends.cpu import ffn as cpu_ffn
from ffn_cases import rand, ref_and_grads, weights

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
GATED = ["swiglu", "geglu", "geglu_tanh"]

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("cpu", torch.device("cpu")) is not None,
                                reason=f"cpu backend: {dispatch.unavailable_reason('cpu', torch.device('cpu'))}")


# --------------------------------------------------------------------------- helpers


_REAL_EMPTY = torch.empty


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch, request):
    """NaN-filled ``torch.empty``; a seed per test (from its id), so a failure reproduces."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows and columns, so that every ragged block edge is exercised."""
    monkeypatch.setattr(cpu_ffn, "_FWD_SCRATCH_BYTES", 1)
    monkeypatch.setattr(cpu_ffn, "_MIN_ROWS", 7)
    monkeypatch.setattr(cpu_ffn, "_BWD_BLOCKS", 7)
    monkeypatch.setattr(cpu_ffn, "_MIN_COLS", 48)
    monkeypatch.setattr(cpu_ffn, "_COL_ALIGN", 16)


# --------------------------------------------------------------------------- bias-GELU

BG_SHAPES = [(300, 1), (50, 7), (4, 129), (2, 4097), (2, 3, 1000)]
BG_SHAPE_IDS = ["1", "7", "129", "4097", "2x3x1000"]


@pytest.mark.parametrize("shape", BG_SHAPES, ids=BG_SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
def test_bias_gelu(approximate, dtype, shape):
    x, dout = rand(*shape, dtype=dtype, scale=2.0), rand(*shape, dtype=dtype)
    bias = rand(shape[-1], dtype=dtype)
    fn = lambda x_, b_: fastattn.bias_gelu(x_, b_, approximate, backend="cpu")
    out, (dx, dbias) = testing.forward_and_grads(fn, (x, bias), dout)
    ref = lambda x_, b_: reference.bias_gelu(x_, b_, approximate)
    (r64, g64), (rlp, glp) = ref_and_grads(ref, (x, bias), dout, dtype)
    assert out.dtype == dtype and out.is_contiguous()
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dx, g64[0], glp[0], "dx")
    if shape[-1] >= 129:  # enough dbias values for their max error to be a fair statistic
        testing.assert_close(dbias, g64[1], glp[1], "dbias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bias_gelu_strided_and_threads(dtype, threads):
    """Rows in two groups with a column offset (no single row stride: copied once), a
    strided bias, a stride-0 (expanded) dout; a column slice and a transposed x through the
    core op directly (the first taken by its row stride, the second copied once); 1 and 2
    threads, with enough elements for the kernel to go parallel."""
    x = rand(3, 90, 1030, dtype=dtype, scale=2.0)[:, 2:70, 1:1027]  # (3, 68, 1026)
    bias = rand(2 * 1026, dtype=dtype)[::2]
    dout = rand(1026, dtype=dtype).expand(3, 68, 1026)
    fn = lambda x_, b_: fastattn.bias_gelu(x_, b_, "tanh", backend="cpu")
    out, (dx, dbias) = testing.forward_and_grads(fn, (x, bias), dout)
    (r64, g64), (rlp, glp) = ref_and_grads(lambda x_, b_: reference.bias_gelu(x_, b_, "tanh"), (x, bias), dout,
                                            dtype)
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dx, g64[0], glp[0], "dx")
    testing.assert_close(dbias, g64[1], glp[1], "dbias")

    b = rand(257, dtype=dtype)
    for what, xs in (("x[:, 1:258]", rand(130, 300, dtype=dtype)[:, 1:258]), ("x.T", rand(257, 40, dtype=dtype).t())):
        d = rand(*xs.shape, dtype=dtype)
        out, dx = cpu_ffn.bias_gelu_fwd(xs, b, "none"), cpu_ffn.bias_gelu_bwd(d, xs, b, "none")
        (r64, g64), (rlp, glp) = ref_and_grads(lambda x_: reference.bias_gelu(x_, b.to(x_.dtype)), (xs,), d, dtype)
        testing.assert_close(out, r64, rlp, f"out ({what})")
        testing.assert_close(dx, g64[0], glp[0], f"dx ({what})")


def test_bias_gelu_extreme_values():
    # Saturated erf/tanh: no inf/inf or 0*inf, the derivative limits are exact.
    x = torch.tensor([[-200.0, -30.0, -5.0, 0.0, 5.0, 30.0, 200.0]])
    bias = torch.tensor([0.0, 0.5, -0.5, 0.0, 1.0, -1.0, 0.0])
    d = torch.ones_like(x)
    for approximate in ("none", "tanh"):
        out = cpu_ffn.bias_gelu_fwd(x, bias, approximate)
        dx = cpu_ffn.bias_gelu_bwd(d, x, bias, approximate)
        (r64, g64), _ = ref_and_grads(lambda x_: reference.bias_gelu(x_, bias.double().to(x_.dtype), approximate),
                                       (x,), d, torch.float32)
        torch.testing.assert_close(out.double(), r64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dx.double(), g64[0], rtol=1e-5, atol=1e-6)


def test_bias_gelu_nan_propagates():
    x = rand(2, 600)
    x[1, 517] = float("nan")
    out = cpu_ffn.bias_gelu_fwd(x, rand(600), "none")
    assert torch.isnan(out[1, 517]) and torch.isfinite(out).sum() == out.numel() - 1


# --------------------------------------------------------------------------- gated MLP


def _check_feed_forward(M, K, N, dtype, activation, layout="pair", K_out=None, lead=None, x=None):
    K_out = K if K_out is None else K_out
    x = rand(*(lead or (M,)), K, dtype=dtype) if x is None else x
    w_gate, w_up, w_down = weights(N, K, K_out, dtype, layout)
    out_shape = (*x.shape[:-1], K_out)
    dout = rand(*out_shape, dtype=dtype)
    if layout == "fused":  # the public op receives the (2N, K) tensor and splits it into views
        w_gate_up = torch.cat([w_gate, w_up])
        w_gate, w_up = w_gate_up.chunk(2, dim=0)
        fn = lambda x_, gu_, d_: fastattn.feed_forward(x_, gu_, d_, activation, backend="cpu")
        out, (dx, dgu, dwd) = testing.forward_and_grads(fn, (x, w_gate_up, w_down), dout)
        grads = (dx, *dgu.chunk(2, dim=0), dwd)
    else:
        fn = lambda x_, g_, u_, d_: fastattn.feed_forward(x_, (g_, u_), d_, activation, backend="cpu")
        out, grads = testing.forward_and_grads(fn, (x, w_gate, w_up, w_down), dout)
    # The core op's own outputs: the pre-activations the backward is given, and none at all
    # without a gradient (the same output).
    out2, gate, up = cpu_ffn.feed_forward_fwd(x, w_gate, w_up, w_down, activation, "gate_up")
    out3, *nothing = cpu_ffn.feed_forward_fwd(x, w_gate, w_up, w_down, activation, "none")
    assert gate.is_contiguous() and up.is_contiguous() and out.is_contiguous()
    assert [t.numel() for t in nothing] == [0, 0]
    torch.testing.assert_close(out2, out)  # the same kernels (a cloned layout may pick another BLAS path)
    torch.testing.assert_close(out3, out)
    ref = lambda x_, g_, u_, d_: reference.feed_forward(x_, (g_, u_), d_, activation)
    (r64, g64), (rlp, glp) = ref_and_grads(ref, (x, w_gate, w_up, w_down), dout, dtype)
    x64 = x.double()
    testing.assert_close(gate, x64 @ w_gate.double().t(), x @ w_gate.t(), "gate")
    testing.assert_close(up, x64 @ w_up.double().t(), x @ w_up.t(), "up")
    assert out.dtype == dtype
    testing.assert_close(out, r64, rlp, "out")
    for name, g, r, rl in zip(("dx", "dw_gate", "dw_up", "dw_down"), grads, g64, glp):
        assert g.dtype == dtype and g.shape == r.shape, name
        testing.assert_close(g, r, rl, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", GATED, ids=GATED)
def test_feed_forward(activation, dtype):
    _check_feed_forward(37, 40, 111, dtype, activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", GATED, ids=GATED)
def test_feed_forward_small_blocks(activation, dtype, small_blocks):
    """Ragged row blocks in the forward and column blocks of dH in the backward (the kernel
    then reads and writes column slices of G and U); hidden 1000 is not a multiple of the
    kernel's 512-element tile."""
    _check_feed_forward(50, 48, 1000, dtype, activation, K_out=24)


# The ragged (tokens, hidden) at a small model dim, odd dims, dim_out != dim.
FF_SHAPES = [(1, 64, 1000, None), (7, 48, 1376, None), (300, 33, 100, None), (9, 129, 70, 24), (5, 1, 3, 2)]
FF_SHAPE_IDS = ["t1-h1000", "t7-h1376", "t300-k33", "k129-kout24", "k1-h3"]


@pytest.mark.parametrize("shape", FF_SHAPES, ids=FF_SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_feed_forward_shapes(dtype, shape):
    M, K, N, K_out = shape
    _check_feed_forward(M, K, N, dtype, "swiglu", K_out=K_out)


@pytest.mark.slow
@pytest.mark.parametrize("shape", FF_SHAPES, ids=FF_SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", GATED, ids=GATED)
@pytest.mark.parametrize("layout", ["pair", "fused", "transposed"])
def test_feed_forward_grid(layout, activation, dtype, shape):
    M, K, N, K_out = shape
    _check_feed_forward(M, K, N, dtype, activation, layout=layout, K_out=K_out)


@pytest.mark.parametrize("layout", ["fused", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_feed_forward_layouts(dtype, layout, threads):
    """Phi-3's (2N, K) gate_up_proj (two row-halves views) and column-major weights, a 3-D
    input; 1 and 2 threads."""
    _check_feed_forward(None, 96, 600, dtype, "geglu_tanh", layout=layout, lead=(3, 41))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_feed_forward_noncontiguous_x(dtype, small_blocks, threads):
    """x a slice of a wider, padded buffer (rows strided, not flattenable to one stride) and a
    transposed x: both read as they are or copied once, with the same results."""
    x = rand(4, 30, 80, dtype=dtype)[1:, 3:26:2, 5:69]  # (3, 12, 64)
    _check_feed_forward(None, 64, 200, dtype, "swiglu", x=x)
    _check_feed_forward(None, 64, 200, dtype, "geglu", x=rand(64, 19, dtype=dtype).t())


def test_feed_forward_empty_and_degenerate():
    x = rand(0, 8)
    w = rand(16, 8), rand(16, 8)
    out = fastattn.feed_forward(x, w, rand(8, 16), backend="cpu")
    assert out.shape == (0, 8)
    # dim 0: every pre-activation is an empty sum, act(0) * 0 = 0.
    x0 = rand(3, 0).requires_grad_()
    w0 = [rand(5, 0).requires_grad_() for _ in range(2)]
    wd = rand(4, 5).requires_grad_()
    out = fastattn.feed_forward(x0, w0, wd, backend="cpu")
    assert torch.equal(out, torch.zeros(3, 4))
    grads = torch.autograd.grad(out, [x0, *w0, wd], torch.ones_like(out))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def _gemm_flops(monkeypatch) -> list[int]:
    """Patch ``torch.mm`` and ``Tensor.addmm_`` to record the FLOPs of every GEMM they run."""
    flops: list[int] = []
    real_mm, real_addmm_ = torch.mm, torch.Tensor.addmm_

    def mm(a, b, **kw):
        flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return real_mm(a, b, **kw)

    def addmm_(self, a, b, **kw):
        flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return real_addmm_(self, a, b, **kw)

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch.Tensor, "addmm_", addmm_)
    return flops


def test_backward_recomputes_no_gemm(monkeypatch, small_blocks):
    """Training keeps G and U: the forward runs the 3 GEMMs of the unfused MLP (2 M N K FLOPs
    each, K_out = K) and the backward its 6 (dH, dw_down, two for dx, dw_gate, dw_up), blocks
    and all; recomputing G and U would add 4 M N K. Autograd keeps G and U (2 M N elements)
    besides x and the weights, where the unfused MLP keeps G, silu(G), U and H."""
    M, K, N = 40, 24, 300
    x, dout = rand(M, K).requires_grad_(), rand(M, K)
    ws = [w.requires_grad_() for w in weights(N, K, K, torch.float32, "pair")]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        flops = _gemm_flops(monkeypatch)
        out = fastattn.feed_forward(x, ws[:2], ws[2], backend="cpu")
        assert sum(flops) == 3 * 2 * M * N * K
        flops.clear()
        torch.autograd.grad(out, [x, *ws], dout)
        assert sum(flops) == 6 * 2 * M * N * K
    inputs = {t.data_ptr() for t in (x, *ws)}
    kept = sum(t.numel() for t in saved if t.data_ptr() not in inputs)
    assert kept == 2 * M * N


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_retained_graph_runs_backward_twice(dtype, small_blocks):
    """The backward reads the kept pre-activations and never overwrites them: a graph kept with
    retain_graph=True gives the same gradients on a second backward (as the unfused MLP's)."""
    x, dout = rand(3, 17, 40, dtype=dtype).requires_grad_(), rand(3, 17, 40, dtype=dtype)
    ws = [w.requires_grad_() for w in weights(200, 40, 40, dtype, "pair")]
    out = fastattn.feed_forward(x, ws[:2], ws[2], "geglu", backend="cpu")
    first = torch.autograd.grad(out, [x, *ws], dout, retain_graph=True)
    second = torch.autograd.grad(out, [x, *ws], dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_thread_count_does_not_change_results(dtype):
    """1 and 2 threads give the same outputs and gradients (the native kernels are elementwise;
    only the BLAS may split its sums differently)."""
    x, dout = rand(64, 128, dtype=dtype), rand(64, 128, dtype=dtype)
    w = weights(700, 128, 128, dtype, "pair")
    results = []
    prev = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(testing.forward_and_grads(lambda *t: fastattn.feed_forward(t[0], t[1:3], t[3], backend="cpu"), (x, *w), dout))
    finally:
        torch.set_num_threads(prev)
    (o1, g1), (o2, g2) = results
    for a, b in zip((o1, *g1), (o2, *g2)):
        torch.testing.assert_close(a, b, rtol=1e-6 if dtype == torch.float32 else 1.6e-2, atol=1e-6)


# --------------------------------------------------------------------------- custom ops and torch.compile


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype, monkeypatch):
    """Schema, fake implementation, autograd registration and AOT dispatch agree with what the
    cpu backend returns (outputs contiguous, as the fake ones)."""
    monkeypatch.setattr(torch, "empty", _REAL_EMPTY)  # opcheck compares outputs of repeated calls
    ops = torch.ops.fastattn
    x = rand(2, 5, 24, dtype=dtype).requires_grad_()
    wg, wu = (rand(40, 24, dtype=dtype, scale=0.2).requires_grad_() for _ in range(2))
    wd = rand(16, 40, dtype=dtype, scale=0.2).requires_grad_()
    torch.library.opcheck(ops.feed_forward_fwd, (x, wg, wu, wd, "geglu", "gate_up", "cpu"))
    torch.library.opcheck(ops.feed_forward_fwd, tuple(t.detach() if isinstance(t, torch.Tensor) else t
                                                      for t in (x, wg, wu, wd, "geglu", "none", "cpu")))
    out, gate, up = ops.feed_forward_fwd(x, wg, wu, wd, "geglu", "gate_up", "cpu")
    assert not gate.requires_grad and not up.requires_grad  # residuals, not differentiable outputs
    torch.library.opcheck(ops.feed_forward_bwd, (rand(2, 5, 16, dtype=dtype), x.detach(), wg.detach(),
                                                 wu.detach(), wd.detach(), gate, up, "geglu", "gate_up", "cpu"))
    b = rand(24, dtype=dtype).requires_grad_()
    torch.library.opcheck(ops.bias_gelu_fwd, (x, b, "tanh", "cpu"))
    torch.library.opcheck(ops.bias_gelu_bwd, (rand(2, 5, 24, dtype=dtype), x.detach(), b.detach(), "none", "cpu"))


@pytest.mark.parametrize("residuals", ["hidden", "gate_up"])
def test_reference_backend_serves_each_residuals(residuals):
    """The core-op contract on the reference backend, which serves every residual choice (the
    oracle of each backend's own): float64 outputs and gradients equal autograd's, and
    ``"none"`` keeps nothing."""
    ops = torch.ops.fastattn
    x, dout = rand(6, 24).double(), rand(6, 16).double()
    w = [t.double() for t in weights(40, 24, 16, torch.float32, "pair")]
    out, res_a, res_b = ops.feed_forward_fwd(x, *w, "geglu_tanh", residuals, "reference")
    grads = ops.feed_forward_bwd(dout, x, *w, res_a, res_b, "geglu_tanh", residuals, "reference")
    leaves = [t.clone().requires_grad_() for t in (x, *w)]
    ref = reference.feed_forward(leaves[0], leaves[1:3], leaves[3], "geglu_tanh")
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, torch.autograd.grad(ref, leaves, dout)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    _, *nothing = ops.feed_forward_fwd(x, *w, "geglu_tanh", "none", "reference")
    assert [t.numel() for t in nothing] == [0, 0]


def test_compile_fullgraph_dynamic():
    """torch.compile(fullgraph=True, dynamic=True) through both ops on the cpu backend: one graph
    serves two token counts, and matches eager (the same kernels) tightly."""
    def fn(x, wg, wu, wd, b):
        h = fastattn.bias_gelu(x, b, "tanh", backend="cpu")
        return fastattn.feed_forward(h, (wg, wu), wd, "swiglu", backend="cpu")

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    w = [rand(48, 32, scale=0.2), rand(48, 32, scale=0.2), rand(32, 48, scale=0.2), rand(32)]
    for tokens in (19, 34):
        x, dout = rand(tokens, 32), rand(tokens, 32)
        with torch._dynamo.config.patch(error_on_recompile=tokens != 19):
            got = testing.forward_and_grads(compiled, (x, *w), dout)
        eager = testing.forward_and_grads(fn, (x, *w), dout)
        for a, e in zip((got[0], *got[1]), (eager[0], *eager[1])):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- dispatch and bad input


def test_auto_picks_cpu_for_cpu_tensors():
    x, b = rand(4, 8), rand(8)
    w = rand(16, 8), rand(16, 8), rand(8, 16)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xs, ws = x.to(dtype), [t.to(dtype) for t in w]
        assert dispatch.select(("feed_forward_fwd", "feed_forward_bwd"), None, x.device, xs, *ws, "swiglu") == "cpu"
        assert dispatch.select(("bias_gelu_fwd", "bias_gelu_bwd"), None, x.device, xs, b.to(dtype), "none") == "cpu"
    # float64 is the reference's: auto falls back, an explicit cpu request says why.
    assert dispatch.select("feed_forward_fwd", None, x.device, x.double(), *[t.double() for t in w],
                           "swiglu") == "reference"
    with pytest.raises(ValueError, match="float64"):
        fastattn.feed_forward(x.double(), [t.double() for t in w[:2]], w[2].double(), backend="cpu")


def _explode(*args, **kwargs):
    raise AssertionError("a kernel ran before the arguments were checked")


BAD = {
    "ff_int_x": (lambda x, b, w: fastattn.feed_forward(x.long(), w[:2], w[2]), TypeError, "x"),
    "ff_dtype_mix": (lambda x, b, w: fastattn.feed_forward(x, (w[0].bfloat16(), w[1]), w[2]), TypeError,
                     "w_gate_up"),
    "ff_w_down_shape": (lambda x, b, w: fastattn.feed_forward(x, w[:2], w[2][:, :5]), ValueError, "w_down"),
    "ff_w_gate_up_rows": (lambda x, b, w: fastattn.feed_forward(x, rand(15, 8), w[2]), ValueError, "w_gate_up"),
    "ff_pair_shapes": (lambda x, b, w: fastattn.feed_forward(x, (w[0], w[1][:3]), w[2]), ValueError,
                       r"w_gate_up\[1\]"),
    "ff_dim": (lambda x, b, w: fastattn.feed_forward(x[:, :5], w[:2], w[2]), ValueError, "w_gate_up"),
    "ff_device_mix": (lambda x, b, w: fastattn.feed_forward(x, w[:2], w[2].to("meta")), ValueError, "w_down"),
    "ff_activation": (lambda x, b, w: fastattn.feed_forward(x, w[:2], w[2], "relu"), ValueError, "activation"),
    "ff_scalar_x": (lambda x, b, w: fastattn.feed_forward(torch.tensor(1.0), w[:2], w[2]), ValueError, "x"),
    "bg_bias_2d": (lambda x, b, w: fastattn.bias_gelu(x, b[None]), ValueError, "bias"),
    "bg_bias_len": (lambda x, b, w: fastattn.bias_gelu(x, b[:5]), ValueError, "bias"),
    "bg_dtype_mix": (lambda x, b, w: fastattn.bias_gelu(x, b.half()), TypeError, "bias"),
    "bg_device_mix": (lambda x, b, w: fastattn.bias_gelu(x, b.to("meta")), ValueError, "bias"),
    "bg_approximate": (lambda x, b, w: fastattn.bias_gelu(x, b, "fast"), ValueError, "approximate"),
    "bg_int_x": (lambda x, b, w: fastattn.bias_gelu(x.int(), b.int()), TypeError, "x"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_bad_input_raises_before_any_kernel(case, backend, monkeypatch):
    monkeypatch.setattr(cpu_ffn, "_C", _Exploding())
    monkeypatch.setattr(torch, "mm", _explode)
    fn, exc, name = BAD[case]
    x, b = rand(4, 8).requires_grad_(), rand(8)
    w = (rand(16, 8), rand(16, 8), rand(8, 16))
    with fastattn.backend(backend), pytest.raises(exc, match=rf"^{name} "):
        fn(x, b, w)


class _Exploding:
    def __getattr__(self, name):
        return _explode


# --------------------------------------------------------------------------- size floor (auto: torch below it)


from fastattn.backends.cpu import ffn_crossover as crossover  # noqa: E402


def _synthetic_table(monkeypatch, floors_at: dict):
    """Replace the measured table with one whose floor for every (op, dtype, direction) at 1 and
    2 threads is ``floors_at[op]``: ratios 0.5 below it, 1.2 from it on."""
    entries = []
    for op, floor in floors_at.items():
        for dtype in ("float32", "bfloat16", "float16"):
            for direction in ("fwd", "fwd+bwd"):
                for threads in (1, 2):
                    for size in (floor // 100, floor // 10, floor, floor * 10):
                        entries.append(dict(op=op, dtype=dtype, direction=direction, threads=threads, size=size,
                                            torch_over_fastattn=0.5 if size < floor else 1.2))
    monkeypatch.setattr(crossover.TABLE, "entries", lambda: tuple(entries))
    monkeypatch.setattr(crossover, "_floors", lambda: crossover.floors(entries))
    crossover._prefer_torch.cache_clear()
    return entries


@pytest.fixture
def spy_torch_routes(monkeypatch):
    """Record which torch route ``auto`` ran (the routes still run)."""
    calls = []
    for name in ("torch_feed_forward", "torch_bias_gelu"):
        real = getattr(crossover, name)
        monkeypatch.setattr(crossover, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    yield calls
    crossover._prefer_torch.cache_clear()


@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd+bwd"])
def test_auto_follows_the_size_floor(grad, monkeypatch, spy_torch_routes):
    """Below the floor auto runs torch's ops, from it on the native route; an explicit
    backend="cpu" and a traced call never leave the native route."""
    M, K, N = 8, 16, 32
    ff_size = crossover.feed_forward_size(M, K, N, K)
    _synthetic_table(monkeypatch, {"feed_forward": ff_size, "bias_gelu": M * N})
    for tokens, expect_torch in ((M - 1, True), (M, False), (M + 5, False)):
        x = rand(tokens, K).requires_grad_(grad)
        w = [t.requires_grad_(grad) for t in weights(N, K, K, torch.float32, "pair")]
        h, b = rand(tokens, N).requires_grad_(grad), rand(N).requires_grad_(grad)
        for backend in ("auto", "cpu"):
            spy_torch_routes.clear()
            with torch.set_grad_enabled(grad):
                fastattn.feed_forward(x, w[:2], w[2], backend=backend)
                fastattn.bias_gelu(h, b, "tanh", backend=backend)
            ran = ["torch_feed_forward", "torch_bias_gelu"] if expect_torch and backend == "auto" else []
            assert spy_torch_routes == ran, (tokens, backend)
    # The decision reads the table's floor at the nearest thread count.
    assert crossover.prefer_torch("feed_forward", torch.bfloat16, ff_size - 1, grad)
    assert not crossover.prefer_torch("feed_forward", torch.bfloat16, ff_size, grad)
    assert not crossover.prefer_torch("feed_forward", torch.float64, 1, grad)  # no entry: native


def test_floors_from_measurements():
    """The floor is the smallest size from which every larger one ran at least on par: a slow
    case above faster ones moves it up; one that is slow only at the largest size keeps the
    largest size native."""
    def group(ratios):
        return [dict(op="bias_gelu", dtype="float32", direction="fwd", threads=1, size=10 ** i, torch_over_fastattn=r)
                for i, r in enumerate(ratios)]
    key = ("bias_gelu", "float32", "fwd", 1)
    assert crossover.floors(group([0.3, 0.5, 1.1, 1.0, 1.3]))[key] == 100
    assert crossover.floors(group([0.3, 1.5, 0.7, 0.95, 1.3]))[key] == 1000  # 0.95: within ON_PAR of torch
    assert crossover.floors(group([1.2, 1.5, 1.1, 1.0, 1.3]))[key] == 1
    assert crossover.floors(group([0.2, 0.3, 0.4, 0.5, 0.6]))[key] == 10000


def test_checked_in_table():
    """The table auto reads: written by its benchmark (the command recorded), every op in fp32,
    bf16 and fp16 both ways, and for each (op, dtype, direction, threads) the floor it implies
    is what prefer_torch applies at that thread count."""
    record = crossover.TABLE.stored()
    assert record["command"].startswith("python benchmarks/bench_cpu_ffn_crossover.py")
    floors = crossover.floors(record["entries"])
    groups = {k[:3] for k in floors}
    assert groups == {(op, dt, d) for op in ("feed_forward", "bias_gelu") for dt in ("float32", "bfloat16", "float16")
                      for d in ("fwd", "fwd+bwd")}
    prev = torch.get_num_threads()
    try:
        for (op, dtype, direction, threads), floor in floors.items():
            torch.set_num_threads(threads)
            sizes = sorted(e["size"] for e in record["entries"]
                           if (e["op"], e["dtype"], e["direction"], e["threads"]) == (op, dtype, direction, threads))
            for size in sizes:
                assert crossover.prefer_torch(op, getattr(torch, dtype), size, direction == "fwd+bwd") == (size < floor)
    finally:
        torch.set_num_threads(prev)
        crossover._prefer_torch.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", GATED, ids=GATED)
def test_torch_route_computes_the_same_feed_forward(activation, dtype):
    """What auto runs below the floor against the float64 reference, by the rule the native
    route meets (outputs and every gradient)."""
    x, dout = rand(2, 9, 48, dtype=dtype), rand(2, 9, 40, dtype=dtype)
    w = weights(136, 48, 40, dtype, "pair")
    fn = lambda x_, g_, u_, d_: crossover.torch_feed_forward(x_, g_, u_, d_, activation)
    out, grads = testing.forward_and_grads(fn, (x, *w), dout)
    ref = lambda x_, g_, u_, d_: reference.feed_forward(x_, (g_, u_), d_, activation)
    (r64, g64), (rlp, glp) = ref_and_grads(ref, (x, *w), dout, dtype)
    assert out.dtype == dtype
    testing.assert_close(out, r64, rlp, "out")
    for name, g, r, rl in zip(("dx", "dw_gate", "dw_up", "dw_down"), grads, g64, glp):
        assert g.dtype == dtype
        testing.assert_close(g, r, rl, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
def test_torch_route_computes_the_same_bias_gelu(approximate, dtype):
    x, dout = rand(7, 300, dtype=dtype, scale=2.0), rand(7, 300, dtype=dtype)
    bias = rand(300, dtype=dtype)
    out, (dx, dbias) = testing.forward_and_grads(lambda x_, b_: crossover.torch_bias_gelu(x_, b_, approximate), (x, bias), dout)
    (r64, g64), (rlp, glp) = ref_and_grads(lambda x_, b_: reference.bias_gelu(x_, b_, approximate), (x, bias), dout,
                                            dtype)
    assert out.dtype == dx.dtype == dbias.dtype == dtype
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dx, g64[0], glp[0], "dx")
    testing.assert_close(dbias, g64[1], glp[1], "dbias")
