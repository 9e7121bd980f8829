"""From a public call to the kernel launch, at most 4 fastattn frames.

A reader following ``flash_attn_func(q, k, v, causal=True)`` to the kernel meets the public
function, the core op's Python entry, the custom op's body and the backend's launcher, and
nothing more. The launch is caught with ``sys.setprofile``: the first call into a native
module (``fastattn._C``, ``_cuda``, ``_cuda_sim``) or into Triton's kernel launcher
(``triton/runtime/*.py: run``); the frames on the stack at that moment that belong to
fastattn (the ``fastattn`` package and its ``kernels``) are counted. A warm-up call first
keeps one-time work (lazy backend import, autotuning) out of the count.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import fastattn
import fastattn.kernels
from fastattn import dispatch, testing

MAX_FRAMES = 4
_ROOTS = tuple(str(Path(m.__file__).parent.resolve()) + os.sep for m in (fastattn, fastattn.kernels))
_NATIVE = {"fastattn._C", "fastattn._cuda", "fastattn._cuda_sim"}


def _ours(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(_ROOTS)


def _frames_at_launch(call) -> list[str]:
    """The fastattn frames (outermost first) on the stack at the first kernel launch in ``call()``."""
    found: list[list[str]] = []

    def profile(frame, event, arg):
        if found:
            return
        if event == "c_call" and getattr(arg, "__module__", None) in _NATIVE:
            caller = frame
        elif (event == "call" and frame.f_code.co_name == "run"
              and f"{os.sep}triton{os.sep}runtime{os.sep}" in frame.f_code.co_filename):
            caller = frame.f_back
        else:
            return
        stack = []
        while caller is not None:
            if _ours(caller.f_code.co_filename):
                stack.append(f"{Path(caller.f_code.co_filename).name}:{caller.f_code.co_name}")
            caller = caller.f_back
        found.append(stack[::-1])

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    assert found, "no kernel launch was seen"
    return found[0]


def _calls(backend: str):
    q, k, v = (testing.randn(1, 40, 2, 64, dtype=torch.float16, seed=s) for s in range(3))
    k_cache, v_cache = (testing.randn(2, 64, 2, 64, dtype=torch.float16, seed=s) for s in (3, 4))
    q1 = testing.randn(2, 1, 2, 64, dtype=torch.float16, seed=5)
    lens = torch.tensor([10, 64], dtype=torch.int32)
    cu = torch.tensor([0, 17, 40], dtype=torch.int32)
    gate, up = testing.randn(8, 64, seed=6), testing.randn(8, 64, seed=7)
    scores = testing.randn(1, 2, 40, 40, dtype=torch.float16, seed=8)
    bias = testing.randn(64, seed=9)
    w_gate, w_up, w_down = testing.randn(96, 64, seed=10), testing.randn(96, 64, seed=11), testing.randn(64, 96, seed=12)
    return {
        "flash_attn_func": lambda: fastattn.flash_attn_func(q, k, v, causal=True, backend=backend),
        "flash_attn_varlen_func": lambda: fastattn.flash_attn_varlen_func(
            q[0], k[0], v[0], cu, cu, 23, 23, causal=True, backend=backend),
        "scaled_dot_product_attention": lambda: fastattn.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, backend=backend),
        "flash_attn_with_kvcache": lambda: fastattn.flash_attn_with_kvcache(
            q1, k_cache, v_cache, cache_seqlens=lens, backend=backend),
        "swiglu": lambda: fastattn.swiglu(gate, up, backend=backend),
        "scaled_masked_softmax": lambda: fastattn.scaled_masked_softmax(
            scores, None, 0.125, True, backend=backend),
        "bias_gelu": lambda: fastattn.bias_gelu(gate, bias, backend=backend),
        "feed_forward": lambda: fastattn.feed_forward(gate, (w_gate, w_up), w_down, backend=backend),
    }


_CASES = [(b, name) for b in ("cpu", "triton", "cuda") for name in _calls("auto")]


@pytest.mark.parametrize("backend,call", _CASES, ids=[f"{b}-{n}" for b, n in _CASES])
def test_at_most_four_fastattn_frames_from_public_call_to_launch(backend, call):
    why = dispatch.unavailable_reason(backend, torch.device("cpu"))
    if why is not None:
        pytest.skip(f"{backend} backend unavailable on this machine: {why}")
    fn = _calls(backend)[call]
    try:
        fn()  # warm-up: lazy imports, autotuning, first-call probes
    except ValueError as exc:  # the backend declines these inputs (dispatch says so by name)
        if "cannot run" in str(exc):
            pytest.skip(f"{backend} does not serve this {call} call: {str(exc).splitlines()[0][:160]}")
        raise
    frames = _frames_at_launch(fn)
    assert len(frames) <= MAX_FRAMES, f"{len(frames)} fastattn frames to the launch: {' -> '.join(frames)}"
    assert frames[0].endswith(f":{call}"), frames
