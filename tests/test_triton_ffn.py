"""Triton feed-forward kernels (fastattn.kernels.activations / .feed_forward) against
fastattn.reference in float64.

Without a GPU they run on CPU tensors under the Triton interpreter (tests/conftest.py
sets TRITON_INTERPRET=1); with one, on CUDA tensors. fp32 must match to ~1e-5 of the
output's scale; fp16/bf16 by flash-attn's rule: max|out - ref64| <= 2 max|ref_lowp -
ref64| + floor, with ref_lowp the reference evaluated in the input dtype. Every output
buffer the launchers allocate is poisoned with NaN first, so a tile left unwritten fails.
"""
from __future__ import annotations

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "0" if __import__("torch").cuda.is_available() else "1")

import pytest
import torch
import torch.nn.functional as F

from fastattn import reference, testing
from fastattn.kernels import activations as act_k
from fastattn.kernels import feed_forward as ff_k
from ffn_cases import rand, ref_and_grads, weights

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
GATED = ["swiglu", "geglu", "geglu_tanh"]
pytestmark = pytest.mark.usefixtures("poisoned")


# --------------------------------------------------------------------------- helpers


_rand = functools.partial(rand, device=DEVICE)


def _gated_ref(activation):
    return lambda g, u: reference.gated_activation(g, u, activation)


def _ragged_grid(test):
    """The slow grid of the issue's ragged (tokens, hidden) over every dtype and activation:
    ``test(activation, dtype, hidden, tokens)``."""
    marks = [pytest.mark.slow,
             pytest.mark.parametrize("tokens", [1, 7, 300], ids=["t1", "t7", "t300"]),
             pytest.mark.parametrize("hidden", [11008, 1376, 1000], ids=["h11008", "h1376", "h1000"]),
             pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS),
             pytest.mark.parametrize("activation", GATED, ids=GATED)]
    for mark in reversed(marks):  # as if stacked in this order above the test
        test = mark(test)
    return test


# --------------------------------------------------------------------------- gated activations

# (shape): the dims 1, 7, 129, 4097; the ragged (tokens, hidden); a 3-D leading shape.
# Enough elements everywhere that the low-precision reference's error is representative.
ACT_SHAPES = [(300, 1), (50, 7), (4, 129), (2, 4097), (1, 11008), (7, 1376), (2, 3, 1000)]
ACT_SHAPE_IDS = ["1", "7", "129", "4097", "t1x11008", "t7x1376", "2x3x1000"]


@pytest.mark.parametrize("shape", ACT_SHAPES, ids=ACT_SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", GATED, ids=GATED)
def test_gated_act_fwd_bwd(activation, dtype, shape):
    gate, up, dout = (_rand(*shape, dtype=dtype, scale=2.0) for _ in range(3))
    out = act_k.gated_act_fwd(gate, up, activation)
    dgate, dup = act_k.gated_act_bwd(dout, gate, up, activation)
    (r64, g64), (rlp, glp) = ref_and_grads(_gated_ref(activation), (gate, up), dout, dtype)
    assert out.dtype == dtype and out.is_contiguous()
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dgate, g64[0], glp[0], "dgate")
    testing.assert_close(dup, g64[1], glp[1], "dup")


@_ragged_grid
def test_gated_act_ragged_grid(activation, dtype, hidden, tokens):
    test_gated_act_fwd_bwd(activation, dtype, (tokens, hidden))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # exp -> inf is intended
def test_gated_act_extreme_values():
    # Saturated sigmoid/erf/tanh: no inf/inf or 0*inf, the derivative limits are exact.
    g = torch.tensor([[-200.0, -30.0, -5.0, 0.0, 5.0, 30.0, 200.0]], device=DEVICE)
    u = torch.ones_like(g) * 1.5
    d = torch.ones_like(g)
    for activation in GATED:
        out = act_k.gated_act_fwd(g, u, activation)
        dgate, dup = act_k.gated_act_bwd(d, g, u, activation)
        (r64, g64), _ = ref_and_grads(_gated_ref(activation), (g, u), d, torch.float32)
        torch.testing.assert_close(out.double(), r64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dgate.double(), g64[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dup.double(), g64[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", GATED, ids=GATED)
def test_gated_act_strided(activation, dtype):
    """A slice of a packed (B, T, 2h) gate_up tensor (rows in two non-chaining groups),
    a stride-0 dout (an expanded gradient) and a transposed gate (column stride != 1)."""
    B, T, h = 2, 5, 67
    base = _rand(B, T + 3, 2 * h, dtype=dtype, scale=2.0)
    gate, up = base[:, 1 : T + 1].chunk(2, dim=-1)
    dout = _rand(h, dtype=dtype).expand(B, T, h)
    rows_inner, views = act_k._rows(dout, gate, up)
    assert rows_inner == T and [v[0] for v in views] == [dout, gate, up]  # taken by strides, no copy
    out = act_k.gated_act_fwd(gate, up, activation)
    dgate, dup = act_k.gated_act_bwd(dout, gate, up, activation)
    (r64, g64), (rlp, glp) = ref_and_grads(_gated_ref(activation), (gate, up), dout, dtype)
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dgate, g64[0], glp[0], "dgate")
    testing.assert_close(dup, g64[1], glp[1], "dup")

    gate_t = _rand(h, T, dtype=dtype, scale=2.0).t()  # (T, h), strides (1, T)
    up_c = _rand(T, h, dtype=dtype)
    out = act_k.gated_act_fwd(gate_t, up_c, activation)
    r64 = reference.gated_activation(gate_t.double(), up_c.double(), activation)
    rlp = reference.gated_activation(gate_t, up_c, activation)
    testing.assert_close(out, r64, rlp, "out (transposed gate)")


def test_rows_layouts():
    """Leading dims in three non-chaining groups are copied once; rows still land right."""
    x = torch.randn(4, 6, 5, 8, device=DEVICE)[::2, ::2, 1:]  # (2, 3, 4, 8)
    rows_inner, ((t, so, si),) = act_k._rows(x)
    expected = x.reshape(-1, 8)
    for r in range(expected.shape[0]):
        start = t.storage_offset() + (r // rows_inner) * so + (r % rows_inner) * si
        assert torch.equal(t.as_strided((8,), (t.stride(-1),), start), expected[r])
    assert act_k._rows(torch.randn(3, device=DEVICE))[0] == 1  # 1-D: one row


# --------------------------------------------------------------------------- bias-GELU


@pytest.mark.parametrize("shape", [(300, 1), (50, 7), (4, 129), (2, 4097), (2, 3, 1000)],
                         ids=["1", "7", "129", "4097", "2x3x1000"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"], ids=["erf", "tanh"])
def test_bias_gelu_fwd_bwd(approximate, dtype, shape):
    x, dout = _rand(*shape, dtype=dtype, scale=2.0), _rand(*shape, dtype=dtype)
    bias = _rand(2 * shape[-1], dtype=dtype)[::2]  # strided bias
    out = act_k.bias_gelu_fwd(x, bias, approximate)
    dx = act_k.bias_gelu_bwd(dout, x, bias, approximate)
    fn = lambda x_, b_: reference.bias_gelu(x_, b_, approximate)
    (r64, g64), (rlp, glp) = ref_and_grads(fn, (x, bias), dout, dtype)
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dx, g64[0], glp[0], "dx")
    if shape[-1] >= 129:  # enough dbias values for their max error to be a fair statistic
        # dbias is dx summed over rows (the op reduces in fp32): the kernel's dx must give it.
        dbias = dx.reshape(-1, shape[-1]).sum(0, dtype=torch.float32).to(dtype)
        testing.assert_close(dbias, g64[1], glp[1], "dbias")


def test_bias_gelu_strided_rows():
    x = _rand(3, 9, 130, scale=2.0)[:, 2:7, 1:]  # rows in two groups, column offset 1
    bias, dout = _rand(129), _rand(129).expand(3, 5, 129)
    out = act_k.bias_gelu_fwd(x, bias, "tanh")
    dx = act_k.bias_gelu_bwd(dout, x, bias, "tanh")
    (r64, g64), (rlp, glp) = ref_and_grads(lambda x_: reference.bias_gelu(x_, bias.to(x_.dtype), "tanh"),
                                            (x,), dout, torch.float32)
    testing.assert_close(out, r64, rlp, "out")
    testing.assert_close(dx, g64[0], glp[0], "dx")


# --------------------------------------------------------------------------- feed-forward GEMM


def _check_feed_forward(M, K, N, dtype, activation, layout="pair", K_out=None, lead=None):
    K_out = K if K_out is None else K_out
    x = _rand(*(lead or (M,)), K, dtype=dtype)
    w_gate, w_up, w_down = weights(N, K, K_out, dtype, layout, device=DEVICE)
    out, hidden, unused = ff_k.feed_forward_fwd(x, w_gate, w_up, w_down, activation, "hidden")
    assert unused.numel() == 0
    dout = _rand(*out.shape, dtype=dtype)
    grads = ff_k.feed_forward_bwd(dout, x, w_gate, w_up, w_down, hidden, unused, activation, "hidden")
    fn = lambda x_, g_, u_, d_: reference.feed_forward(x_, (g_, u_), d_, activation)
    (r64, g64), (rlp, glp) = ref_and_grads(fn, (x, w_gate, w_up, w_down), dout, dtype)
    h64 = reference.gated_activation(x.double() @ w_gate.double().t(), x.double() @ w_up.double().t(), activation)
    hlp = reference.gated_activation(x @ w_gate.t(), x @ w_up.t(), activation)
    testing.assert_close(hidden, h64, hlp, "hidden")
    testing.assert_close(out, r64, rlp, "out")
    for name, g, r, rl in zip(("dx", "dw_gate", "dw_up", "dw_down"), grads, g64, glp):
        testing.assert_close(g, r, rl, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", GATED, ids=GATED)
def test_feed_forward(activation, dtype):
    _check_feed_forward(17, 40, 111, dtype, activation)


# The ragged (tokens, hidden) at a small model dim, odd dims, dim_out != dim.
FF_SHAPES = [(1, 64, 1000, None), (7, 48, 1376, None), (300, 33, 100, None), (9, 129, 70, 24)]
FF_SHAPE_IDS = ["t1-h1000", "t7-h1376", "t300-k33", "k129-kout24"]


@pytest.mark.parametrize("shape", FF_SHAPES, ids=FF_SHAPE_IDS)
def test_feed_forward_ragged(shape):
    """bf16 (fp32 and fp16 in the slow grid below)."""
    M, K, N, K_out = shape
    _check_feed_forward(M, K, N, torch.bfloat16, "swiglu", K_out=K_out)


@pytest.mark.parametrize("layout", ["fused", "pair", "transposed"], ids=["fused", "pair", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_feed_forward_weight_layouts(layout, dtype):
    _check_feed_forward(20, 72, 90, dtype, "geglu", layout=layout, lead=(2, 10))


def test_feed_forward_strided_x():
    x = _rand(3, 11, 80)[:, 2:9, 5:69]  # (3, 7, 64): rows don't chain, inner stride 1
    w_gate, w_up, w_down = weights(50, 64, 64, torch.float32, "pair", device=DEVICE)
    out, hidden, _ = ff_k.feed_forward_fwd(x, w_gate, w_up, w_down, "swiglu", "hidden")
    ref = reference.feed_forward(x.double(), (w_gate.double(), w_up.double()), w_down.double(), "swiglu")
    testing.assert_close(out, ref, ref, "out")
    assert hidden.shape == (3, 7, 50)


@_ragged_grid
def test_feed_forward_ragged_grid(activation, dtype, hidden, tokens):
    _check_feed_forward(tokens, 96, hidden, dtype, activation, layout="fused")


def _run_config(kernel, config, M, N, *args, **constexprs):
    """Launch autotuned ``kernel`` with one explicit ``config`` over an ``M x N`` output."""
    kw = config.kwargs
    grid = (-(-M // kw["BLOCK_M"]) * -(-N // kw["BLOCK_N"]),)
    ff_k._interpreter_fixes()
    kernel.fn[grid](*args, **constexprs, **kw, num_warps=config.num_warps, num_stages=config.num_stages)


FWD_SHAPES = ff_k.all_shapes(ff_k._FWD_SHAPES)
BWD_SHAPES = ff_k.all_shapes(ff_k._BWD_SHAPES)


def _shape_id(shape):
    return "x".join(map(str, shape[:3])) + f"-w{shape[3]}-s{shape[4]}"


@pytest.mark.parametrize("shape", FWD_SHAPES, ids=[_shape_id(s) for s in FWD_SHAPES])
def test_every_forward_config(shape):
    """Each autotuning candidate's tiling (K and N tails included) is right, not only the one picked."""
    config = ff_k._config(shape)
    M, K, N = 37, 2 * config.kwargs["BLOCK_K"] + 7, config.kwargs["BLOCK_N"] + 11
    x = _rand(M, K, dtype=torch.bfloat16)
    w_gate, w_up, _ = weights(N, K, K, torch.bfloat16, "fused", device=DEVICE)
    h = torch.empty(M, N, dtype=torch.bfloat16, device=DEVICE)
    _run_config(ff_k._ffn_gate_up_fwd_kernel, config, M, N, x, w_gate, w_up, h, M, N, K, 64,
                x.stride(0), x.stride(1), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1),
                h.stride(0), ACTIVATION=act_k.SWIGLU, DOT_PRECISION="tf32")
    h64 = reference.swiglu(x.double() @ w_gate.double().t(), x.double() @ w_up.double().t())
    hlp = reference.swiglu(x @ w_gate.t(), x @ w_up.t())
    testing.assert_close(h, h64, hlp, str(config))


@pytest.mark.parametrize("shape", BWD_SHAPES, ids=[_shape_id(s) for s in BWD_SHAPES])
def test_every_backward_config(shape):
    config = ff_k._config(shape)
    M, K, N, K_out = 37, 2 * config.kwargs["BLOCK_K"] + 7, config.kwargs["BLOCK_N"] + 11, config.kwargs["BLOCK_K"] + 3
    x, dout = _rand(M, K, dtype=torch.bfloat16), _rand(M, K_out, dtype=torch.bfloat16)
    w_gate, w_up, w_down = weights(N, K, K_out, torch.bfloat16, "pair", device=DEVICE)
    dg = torch.empty(M, N, dtype=torch.bfloat16, device=DEVICE)
    du = torch.empty(M, N, dtype=torch.bfloat16, device=DEVICE)
    _run_config(ff_k._ffn_gate_up_bwd_kernel, config, M, N, x, dout, w_gate, w_up, w_down, dg, du, M, N, K, K_out,
                64, x.stride(0), x.stride(1), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1),
                dout.stride(0), dout.stride(1), w_down.stride(0), w_down.stride(1), dg.stride(0),
                ACTIVATION=act_k.GEGLU, DOT_PRECISION="tf32")
    refs = []
    for ct in (torch.float64, torch.bfloat16):
        g = (x.to(ct) @ w_gate.to(ct).t()).requires_grad_()
        u = (x.to(ct) @ w_up.to(ct).t()).requires_grad_()
        refs.append(torch.autograd.grad(reference.geglu(g, u), (g, u), dout.to(ct) @ w_down.to(ct)))
    testing.assert_close(dg, refs[0][0], refs[1][0], f"dG {config}")
    testing.assert_close(du, refs[0][1], refs[1][1], f"dU {config}")


# --------------------------------------------------------------------------- memory


def _peak_allocated_bytes(fn):
    """Peak bytes allocated by torch while ``fn`` runs, measured by the allocator itself:
    ``torch.cuda.max_memory_allocated`` on a GPU, the CPU allocator's events recorded by
    the profiler (``profile_memory=True``) on a CPU, replayed in time order."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, result
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # Allocations are charged to the op that made them (self memory); frees outside
        # any op appear as "[memory]" events.
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, result


def test_feed_forward_forward_never_allocates_preactivations():
    """The fused forward allocates the hidden tensor and the output, nothing of the size of
    the gate/up pre-activations; the same measurement on the unfused torch expression
    sees them (so the measurement can fail)."""
    M, K, N = 64, 32, 512
    x = _rand(M, K)
    w_gate, w_up, w_down = weights(N, K, K, torch.float32, "fused", device=DEVICE)
    ff_k.feed_forward_fwd(x, w_gate, w_up, w_down, "swiglu", "hidden")  # warm-up outside the measurement
    hidden_bytes, out_bytes = M * N * 4, M * K * 4
    peak, (out, hidden, _) = _peak_allocated_bytes(
        lambda: ff_k.feed_forward_fwd(x, w_gate, w_up, w_down, "swiglu", "hidden"))
    assert peak <= hidden_bytes + out_bytes + 4096, f"forward peaked at {peak} bytes"
    # Unfused, G, U and silu(G) are live at once: the same measurement must see them.
    unfused, _ = _peak_allocated_bytes(lambda: (F.silu(x @ w_gate.t()) * (x @ w_up.t())) @ w_down.t())
    assert unfused >= 3 * hidden_bytes, f"the measurement missed the unfused pre-activations ({unfused})"


def _saved_activation_bytes(fn, inputs):
    """Bytes autograd keeps for the backward of ``fn(*inputs)``, inputs (x and weights) excluded."""
    saved = {}
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    out.sum().backward()
    return sum(saved.values())


def test_feed_forward_keeps_only_hidden_for_backward():
    """Through the public op: autograd keeps ``x``, the weights and ``hidden`` (M x N), not
    the gate/up pre-activations (2 M N) that eager PyTorch keeps (with silu(G): 4 M N)."""
    import fastattn

    M, K, N = 24, 32, 96
    x = _rand(M, K).requires_grad_()
    w_gate, w_up, w_down = (w.detach().requires_grad_() for w in weights(N, K, K, torch.float32, "pair", device=DEVICE))
    inputs = (x, w_gate, w_up, w_down)
    ours = _saved_activation_bytes(lambda *t: fastattn.feed_forward(t[0], (t[1], t[2]), t[3], backend="triton"), inputs)
    assert ours == M * N * 4
    eager = _saved_activation_bytes(lambda x_, g, u, d: (F.silu(x_ @ g.t()) * (x_ @ u.t())) @ d.t(), inputs)
    assert eager >= ours + 3 * M * N * 4


# --------------------------------------------------------------------------- through the public ops


def _public_cases():
    import fastattn

    g, u = _rand(6, 40), _rand(6, 40)
    x, b = _rand(3, 5, 40), _rand(40)
    xw = _rand(7, 24)
    wg, wu, wd = weights(33, 24, 24, torch.float32, "fused", device=DEVICE)
    return {
        "swiglu": (fastattn.swiglu, (g, u), {}),
        "geglu_tanh": (fastattn.geglu, (g, u), {"approximate": "tanh"}),
        "bias_gelu": (fastattn.bias_gelu, (x, b), {}),
        "feed_forward": (lambda x_, a, c, d, **kw: fastattn.feed_forward(x_, (a, c), d, "geglu", **kw),
                         (xw, wg, wu, wd), {}),
    }


@pytest.mark.parametrize("name", ["swiglu", "geglu_tanh", "bias_gelu", "feed_forward"],
                         ids=["swiglu", "geglu_tanh", "bias_gelu", "feed_forward"])
def test_public_op_triton_matches_reference(name):
    """``backend="triton"`` through the custom op and its autograd equals the reference backend."""
    fn, inputs, kw = _public_cases()[name]
    results = []
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves, backend=backend, **kw)
        out.backward(torch.ones_like(out))
        results.append([out] + [t.grad for t in leaves])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["swiglu", "bias_gelu", "feed_forward"], ids=["swiglu", "bias_gelu", "feed_forward"])
def test_public_op_compiles_fullgraph(name):
    fn, inputs, kw = _public_cases()[name]
    compiled = torch.compile(lambda *t: fn(*t, backend="triton", **kw), fullgraph=True)
    results = []
    for f in (compiled, lambda *t: fn(*t, backend="triton", **kw)):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = f(*leaves)
        out.backward(torch.ones_like(out))
        results.append([out] + [t.grad for t in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_custom_ops_opcheck():
    g, u, d = _rand(4, 24), _rand(4, 24), _rand(4, 24)
    x, b = _rand(4, 24), _rand(24)
    xw = _rand(5, 16)
    wg, wu, wd = weights(20, 16, 16, torch.float32, "pair", device=DEVICE)
    ops = torch.ops.fastattn
    cases = [
        (ops.gated_act_fwd, (g, u, "swiglu", "triton")),
        (ops.gated_act_bwd, (d, g, u, "geglu", "triton")),
        (ops.bias_gelu_fwd, (x, b, "tanh", "triton")),
        (ops.bias_gelu_bwd, (d, x, b, "none", "triton")),
        (ops.feed_forward_fwd, (xw, wg, wu, wd, "swiglu", "hidden", "triton")),
        (ops.feed_forward_fwd, (xw, wg, wu, wd, "swiglu", "none", "triton")),
        (ops.feed_forward_bwd, (_rand(5, 16), xw, wg, wu, wd, _rand(5, 20), _rand(0), "swiglu", "hidden",
                                "triton")),
    ]
    for op, args in cases:
        # Forward ops are checked with inputs that require grad (their autograd registration),
        # except residuals="none", which promises no backward.
        grad = op in (ops.gated_act_fwd, ops.bias_gelu_fwd, ops.feed_forward_fwd) and "none" not in args
        grad_args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and grad else a for a in args)
        torch.library.opcheck(op, grad_args)


def test_triton_backend_registration():
    from fastattn import dispatch

    for op in ("gated_act_fwd", "gated_act_bwd", "bias_gelu_fwd", "bias_gelu_bwd", "feed_forward_fwd",
               "feed_forward_bwd"):
        assert "triton" in dispatch.implementations(op)
    g = _rand(2, 8)
    assert dispatch.implementations("gated_act_fwd")["triton"].supports(g, g, "swiglu") is None
    assert "float64" in dispatch.implementations("gated_act_fwd")["triton"].supports(g.double(), g.double(), "swiglu")


# --------------------------------------------------------------------------- ahead-of-time compile

_FFN_KERNELS = ("feed_forward_", "gated_act_", "bias_gelu_")


@pytest.fixture(scope="module")
def aot_records():
    """Every feed-forward AOT case compiled for sm_80 and sm_90 (fastattn/buildcheck/triton_aot.py: in an
    interpreter-free subprocess, cached on disk)."""
    from fastattn.buildcheck import triton_aot as _aot

    cases = [c for c in _aot.discover_cases() if c.kernel.startswith(_FFN_KERNELS)]
    assert {c.kernel for c in cases} >= {"feed_forward_gate_up_fwd", "feed_forward_gate_up_bwd", "gated_act_fwd",
                                         "gated_act_bwd", "bias_gelu_fwd", "bias_gelu_bwd"}
    return _aot.kernel_reports((80, 90), cases=cases)


def _record_name(r):
    return f"{r['kernel']} {r['arch']} {r['config']}"


def test_aot_every_config_compiles_fits_and_does_not_spill(aot_records):
    from fastattn.kernels import _configs as _aot

    assert not [f"{_record_name(r)}: {r['error']}" for r in aot_records if r["error"]]
    assert {r["arch"] for r in aot_records} == {"sm_80", "sm_90"}
    for r in aot_records:
        assert r["shared_memory_bytes"] <= _aot.shared_memory_limit(int(r["arch"][3:])), _record_name(r)
        assert 0 < r["registers"] <= 255, _record_name(r)
    spilled = [f"{_record_name(r)}: {r['spill_bytes']} B, {r['registers']} regs" for r in aot_records
               if r["spill_bytes"]]
    assert not spilled, "\n".join(spilled)


def test_aot_smem_estimate_bounds_the_compiled_kernels(aot_records):
    """The pruning's shared-memory estimate is never below what the compiler allocated, so a
    config the autotuner keeps on sm_86/sm_89 (99 KB) really fits there."""
    for r in aot_records:
        if r["kernel"].startswith("feed_forward_"):
            c = r["config"]
            shape = (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["num_warps"], c["num_stages"])
            assert ff_k.smem_bytes(shape, 4 if c["dtype"] == "fp32" else 2) >= r["shared_memory_bytes"], _record_name(r)


@pytest.mark.parametrize("arch", [80, 86, 89, 90], ids=["sm80", "sm86", "sm89", "sm90"])
def test_aot_cases_are_the_kept_configs(arch):
    """Each arch and operand width keeps at least one config, and aot_cases covers exactly them."""
    cases = ff_k.aot_cases()
    for kernel, table in (("feed_forward_gate_up_fwd", ff_k._FWD_SHAPES), ("feed_forward_gate_up_bwd", ff_k._BWD_SHAPES)):
        for dtype, elem in (("bf16", 2), ("fp32", 4)):
            kept = set(ff_k.candidate_shapes(table, arch, elem))
            assert kept, f"{kernel} keeps no config for {dtype} on sm_{arch}"
            covered = {(c.config["BLOCK_M"], c.config["BLOCK_N"], c.config["BLOCK_K"], c.num_warps, c.num_stages)
                       for c in cases if c.kernel == kernel and c.config["dtype"] == dtype and arch in c.archs}
            assert covered == kept, f"{kernel} {dtype} sm_{arch}"
