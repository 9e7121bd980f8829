"""A program whose first fastattn call is traced by torch.compile (fullgraph, default backend).

The backends are imported lazily, on the first call; Dynamo cannot trace imports, so that
first load must happen outside the traced code. Run in a fresh interpreter: inside the test
session some earlier test has long since loaded them.
"""
import subprocess
import sys
import textwrap


def test_first_call_compiled_fullgraph():
    script = textwrap.dedent("""
        import sys
        import torch
        import fastattn
        from fastattn import dispatch, reference
        from fastattn.attention_args import AttentionArgs

        assert not dispatch._loaded, "backends already loaded before the first call"
        q, k, v = (torch.randn(1, 2, 16, 32, generator=torch.Generator().manual_seed(s)) for s in range(3))
        fn = torch.compile(lambda q, k, v: fastattn.scaled_dot_product_attention(q, k, v, is_causal=True),
                           fullgraph=True)
        out = fn(q, k, v)
        want, _ = reference.attention(q.double(), k.double(), v.double(), AttentionArgs(scale=32 ** -0.5, causal=True))
        err = (out.double() - want).abs().max().item()
        assert err < 1e-5, err
        print("first compiled call ok", err)
    """)
    env_python = sys.executable
    res = subprocess.run([env_python, "-c", script], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "first compiled call ok" in res.stdout


def test_importing_fastattn_imports_neither_dynamo_nor_triton():
    """``import fastattn`` leaves Triton unimported (``fastattn verify`` and the tests switch the
    Triton interpreter on before its first import), and so Dynamo too, which imports Triton."""
    script = "import sys, fastattn; print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip() == "[]", res.stdout
