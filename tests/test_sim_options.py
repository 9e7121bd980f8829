"""The host SIMT runtime's settings as fastattn._cuda_sim exposes them: blocks in flight at
once (2 by default, FASTATTN_SIM_BLOCKS), random early landing of cp.async copies (on by
default, FASTATTN_SIM_EARLY_COPIES) and its seed; a changed setting is read back and the
tensor-core attention kernel (the one that uses cp.async) still matches the float64
reference with three blocks in flight and with early landing off and on.
"""
from __future__ import annotations

import os

import pytest
import torch

import fastattn
from fastattn import reference

cuda_sim = pytest.importorskip("fastattn._cuda_sim", reason="fastattn._cuda_sim is not built")


@pytest.fixture
def restore_options():
    saved = cuda_sim.sim_options()
    yield
    cuda_sim.set_sim_options(**saved)


def test_defaults_follow_the_environment(restore_options):
    opts = cuda_sim.sim_options()
    assert opts["concurrent_blocks"] == int(os.environ.get("FASTATTN_SIM_BLOCKS", "2"))
    assert opts["early_copies"] == (os.environ.get("FASTATTN_SIM_EARLY_COPIES", "1") != "0")
    with pytest.raises(ValueError, match="at least 1"):
        cuda_sim.set_sim_options(concurrent_blocks=0)


@pytest.mark.parametrize("early", [False, True], ids=["early-off", "early-on"])
def test_settings_apply_and_attention_stays_correct(restore_options, early):
    cuda_sim.set_sim_options(concurrent_blocks=3, early_copies=early, seed=5)
    assert cuda_sim.sim_options() == {"concurrent_blocks": 3, "early_copies": early, "seed": 5}
    torch.manual_seed(0)
    # Two query blocks of 64 rows x 2 heads = 4 blocks, three key tiles each.
    q = torch.randn(1, 100, 2, 64).half()
    k = torch.randn(1, 150, 2, 64).half()
    v = torch.randn(1, 150, 2, 64).half()
    out = fastattn.flash_attn_func(q, k, v, backend="cuda")
    ref64 = reference.flash_attn_func(q.double(), k.double(), v.double())
    ref_lp = reference.flash_attn_func(q, k, v)
    err = (out.double() - ref64).abs().max().item()
    assert err <= 2 * (ref_lp.double() - ref64).abs().max().item() + 1e-4, err
