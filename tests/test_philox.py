"""fastattn.philox, the dropout stream's specification: Philox4x32-10 known-answer vectors,
bit equality with Triton's ``tl.rand`` (under the interpreter without a GPU), and the
counter layout of the attention dropout mask."""
from __future__ import annotations

import os

import pytest
import torch

from fastattn import philox


def _words(*values):
    return [torch.tensor([v], dtype=torch.int64) for v in values]


# Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key, expected output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT, ids=["zeros", "ones", "pi"])
def test_philox4x32_10_known_answers(counter, key, expected):
    got = philox.philox4x32(*_words(*counter), *key)
    assert [int(w) for w in got] == list(expected)


def test_uniform_is_in_unit_interval_and_uniform():
    u = philox.uniform(2024, torch.arange(200_000, dtype=torch.int64))
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    # 20 equal bins of 10k expected draws: each within 6 sigma (sigma ~ 97).
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    assert (counts - 10_000).abs().max() < 600, counts


def test_uniform_equals_triton_rand():
    """The specification is what the kernels run: ``tl.rand`` on the same seeds and counters,
    including counters past 2**32 (high word) and seeds past 2**32 (high key word)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    import triton
    import triton.language as tl

    @triton.jit
    def draw(Out, Counter, seed, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Out + offs, tl.rand(seed, tl.load(Counter + offs)))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    for seed in (0, 7, 2**31 + 5, 2**62 - 3):
        counter = torch.randint(0, 2**62, (256,), generator=gen, dtype=torch.int64)
        counter[:8] = torch.arange(8)
        out = torch.full((256,), float("nan"), device=device)
        draw[(1,)](out, counter.to(device), seed, N=256)
        assert torch.equal(out.cpu(), philox.uniform(seed, counter)), f"seed {seed}"


def test_keep_mask_counter_layout():
    """Entry (b, h, i, j) draws counter offset + ((b * H + h) * Lq + i) * Lk + j: moving the
    offset by one row's worth of counters shifts the mask by one row."""
    b, h, lq, lk = 2, 3, 5, 7
    base = philox.dropout_keep_mask(11, 0, 0.5, b, h, lq, lk)
    shifted = philox.dropout_keep_mask(11, lk, 0.5, b, h, lq, lk)
    assert base.shape == (b, h, lq, lk) and base.dtype == torch.bool
    assert torch.equal(shifted.reshape(-1, lk)[:-1], base.reshape(-1, lk)[1:])
    assert not torch.equal(base, philox.dropout_keep_mask(12, 0, 0.5, b, h, lq, lk))
    assert torch.equal(base, philox.dropout_keep_mask(11, 0, 0.5, b, h, lq, lk))
