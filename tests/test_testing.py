"""fastattn.testing: the one tolerance rule, output poisoning and seeded inputs."""
from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference, testing


def test_rule_accepts_a_faithful_low_precision_kernel_and_rejects_a_sloppy_one():
    """fastattn's bf16 attention passes; the same output with an error of a few bf16 ulps of
    the largest value added to one element fails."""
    q, k, v = (testing.randn(1, 2, 70, 32, dtype=torch.bfloat16, seed=s) for s in range(3))
    out = fastattn.flash_attn_func(q, k, v, causal=True)
    ref64 = reference.flash_attn_func(q.double(), k.double(), v.double(), causal=True)
    ref_lowp = reference.flash_attn_func(q, k, v, causal=True)
    testing.assert_close(out, ref64, ref_lowp, "out")
    err, bound = testing.error_and_bound(out, ref64, ref_lowp)
    assert 0 < err <= bound
    sloppy = out.clone()
    sloppy.view(-1)[123] += 3 * bound
    with pytest.raises(AssertionError, match="max error"):
        testing.assert_close(sloppy, ref64, ref_lowp, "out")


def test_fp32_is_held_to_1e5_relative():
    ref64 = torch.tensor([100.0, -3.0, 0.5], dtype=torch.float64)
    ok = (ref64 * (1 + 5e-6)).float()
    testing.assert_close(ok, ref64, ref64.float())
    bad = ref64.float().clone()
    bad[1] += 2e-3  # 2e-5 of the largest magnitude
    with pytest.raises(AssertionError):
        testing.assert_close(bad, ref64, ref64.float())
    # ``scale`` widens the floor for results small by cancellation.
    testing.assert_close(bad, ref64, ref64.float(), scale=1e3)


def test_non_finite_values_must_match_the_oracle():
    ref64 = torch.tensor([1.0, float("inf"), float("nan")], dtype=torch.float64)
    testing.assert_close(torch.tensor([1.0, float("inf"), float("nan")]), ref64)
    for got in ([float("nan"), float("inf"), float("nan")],   # NaN where the oracle is finite
                [1.0, float("-inf"), float("nan")],           # wrong infinity
                [1.0, float("inf"), 0.0]):                    # a value where the oracle has NaN
        err, bound = testing.error_and_bound(torch.tensor(got), ref64)
        assert err > bound, got
        with pytest.raises(AssertionError):
            testing.assert_close(torch.tensor(got), ref64)
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_close(torch.zeros(2), ref64)


def test_poisoned_allocations_fill_and_restore():
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    with testing.poisoned_allocations():
        assert torch.isnan(torch.empty(5)).all()
        assert torch.isnan(torch.empty_like(torch.ones(3, dtype=torch.bfloat16))).all()
        assert torch.isnan(torch.ones(2).new_empty(4)).all()
        assert (torch.empty(3, dtype=torch.int32) == torch.iinfo(torch.int32).max).all()
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


def test_unwritten_output_is_caught():
    """A kernel that forgets one element: with poisoned allocations the comparison fails."""
    x = testing.randn(4, 8, seed=1)

    def forgetful_relu(t):
        out = torch.empty_like(t)
        out[:, :-1] = t[:, :-1].clamp_min(0)
        return out

    ref64 = x.double().clamp_min(0)
    with testing.poisoned_allocations():
        got = forgetful_relu(x)
    with pytest.raises(AssertionError, match="NaN"):
        testing.assert_close(got, ref64, x.clamp_min(0))


def test_randn_is_seeded_and_forward_and_grads_upcasts():
    a = testing.randn(3, 5, dtype=torch.float16, seed=7, scale=2.0)
    assert a.dtype == torch.float16 and torch.equal(a, testing.randn(3, 5, dtype=torch.float16, seed=7, scale=2.0))
    assert not torch.equal(a, testing.randn(3, 5, dtype=torch.float16, seed=8, scale=2.0))
    x, w = testing.randn(4, 3, seed=1), testing.randn(3, 2, seed=2)
    dout = testing.randn(4, 2, seed=3)
    out, (dx, dw) = testing.forward_and_grads(torch.matmul, (x, w), dout, compute_dtype=torch.float64)
    assert out.dtype == dx.dtype == dw.dtype == torch.float64
    torch.testing.assert_close(dx, dout.double() @ w.double().T)
    torch.testing.assert_close(dw, x.double().T @ dout.double())
    out, grads = testing.forward_and_grads(torch.matmul, (x, w))
    assert grads == () and out.dtype == torch.float32
