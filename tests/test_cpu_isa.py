"""``FASTATTN_CPU_ISA``: forcing the native CPU kernels onto a lower instruction set than the
CPU's best (fastattn/backends/cpu/attention.py, ``force_isa``), read once when the kernels'
module is imported; unknown names and instruction sets this CPU lacks are refused with a
ValueError naming the variable, before any kernel runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastattn
from fastattn import reference

cpu = pytest.importorskip("fastattn.backends.cpu.attention", reason="fastattn._C (native CPU kernels) not built")

_ORDER = ["avx2", "avx512", "avx512bf16"]
# This CPU's best (the level in use may be lower when the variable is set for the run).
cpu._C.cpu_attention_use_isa("auto")
BEST = cpu._C.cpu_attention_isa()
cpu._C.cpu_attention_use_isa(cpu.isa())
AVAILABLE = _ORDER[: _ORDER.index(BEST) + 1] if BEST in _ORDER else []
if not AVAILABLE:
    pytest.skip("this CPU has neither AVX2+FMA nor AVX-512", allow_module_level=True)


@pytest.fixture
def restore_isa():
    """Leaves the kernels on the level chosen at import after the test, whatever it forced."""
    yield
    cpu._C.cpu_attention_use_isa(cpu.isa())


def _import_isa(value: str) -> subprocess.CompletedProcess:
    """A fresh interpreter with ``FASTATTN_CPU_ISA=value`` that imports the kernels' module
    and prints the instruction set in use."""
    env = dict(os.environ, FASTATTN_CPU_ISA=value)
    code = "from fastattn.backends.cpu import attention as c; print(c.isa(), c._C.cpu_attention_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_env_forces_a_lower_isa_at_import():
    """Read at import: the module's probed ISA and the kernels' dispatcher agree on it."""
    lowest = AVAILABLE[0]
    done = _import_isa(lowest.upper())  # case-insensitive
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [lowest, lowest]


def test_env_unknown_name_is_refused_at_import():
    done = _import_isa("sse4")
    assert done.returncode != 0
    assert "ValueError" in done.stderr and "FASTATTN_CPU_ISA='sse4'" in done.stderr


@pytest.mark.parametrize("name", AVAILABLE + ["auto", ""])
def test_force_isa_every_level_this_cpu_has(restore_isa, name):
    assert cpu.force_isa(name) == (name or "auto").replace("auto", BEST)


@pytest.mark.parametrize("name", ["sse2", "avx", "avx512_bf16", "neon"])
def test_force_isa_unknown_names(restore_isa, name):
    before = cpu._C.cpu_attention_isa()
    with pytest.raises(ValueError, match=r"FASTATTN_CPU_ISA=.*expected one of avx2, avx512, avx512bf16"):
        cpu.force_isa(name)
    assert cpu._C.cpu_attention_isa() == before  # nothing changed


def test_force_isa_one_this_cpu_lacks(restore_isa, monkeypatch):
    """A CPU without the named set (the dispatcher declines it): refused, naming the CPU's best.
    Simulated by a dispatcher that declines every forced set."""
    real = cpu._C

    class Lacking:
        def __getattr__(self, attr):
            return getattr(real, attr)

        declined = False

        def cpu_attention_use_isa(self, name):
            # Declines the first request (the set this CPU would lack); later ones restore levels.
            if not self.declined:
                self.declined = True
                return False
            return real.cpu_attention_use_isa(name)

    before = real.cpu_attention_isa()
    monkeypatch.setattr(cpu, "_C", Lacking())
    with pytest.raises(ValueError, match=rf"FASTATTN_CPU_ISA='avx2': this CPU does not have it \(its best is {BEST}"):
        cpu.force_isa("avx2")
    assert real.cpu_attention_isa() == before  # nothing changed


@pytest.mark.skipif("avx512bf16" in AVAILABLE, reason="this CPU has every instruction set the kernels know")
def test_env_isa_this_cpu_lacks_is_refused_at_import():
    done = _import_isa("avx512bf16")
    assert done.returncode != 0 and "this CPU does not have it" in done.stderr


@pytest.mark.parametrize("name", AVAILABLE)
def test_forced_isa_computes_the_same_attention(restore_isa, name):
    """Each forced level runs (and matches the reference in fp32)."""
    cpu.force_isa(name)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 64) for _ in range(3))
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True, backend="cpu")
    ref = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
