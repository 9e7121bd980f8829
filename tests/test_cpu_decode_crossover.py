"""``auto`` decodes on the CPU with whichever of fastattn's native kernel and torch's flash CPU
kernel the measured crossover table (benchmarks/bench_cpu_crossover.py) says is faster; both
give the reference's answer, and an explicit ``backend="cpu"`` always runs the native kernel."""
import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.backends.cpu import decode_crossover as crossover
from decode_cases import check


def _inputs(heads, heads_k, dtype, seed=0, lens=(37, 0, 120, 120)):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(len(lens), 1, heads, 64, generator=gen).to(dtype)
    k_cache, v_cache = (torch.randn(len(lens), 130, heads_k, 64, generator=gen).to(dtype) for _ in range(2))
    k_new, v_new = (torch.randn(len(lens), 1, heads_k, 64, generator=gen).to(dtype) for _ in range(2))
    return q, k_cache, v_cache, k_new, v_new, torch.tensor(lens, dtype=torch.int32)


def test_table_is_measured_and_well_formed():
    entries = crossover.TABLE.entries()
    assert entries, "the crossover table must be checked in (python benchmarks/bench_cpu_crossover.py --write)"
    for e in entries:
        assert e["torch_over_fastattn"] == pytest.approx(e["torch_ms"] / e["fastattn_ms"])
        assert e["dtype"] in ("float32", "bfloat16") and e["group"] >= 1 and e["keys"] > 0
        assert e["batch"] >= 1 and e["heads_k"] >= 1 and e["head_dim"] >= 1 and e["threads"] >= 1
    machine = crossover.TABLE.machine()
    assert machine["isa"] and machine["threads"] and min(machine["threads"]) >= 1
    # The decision follows the measurement nearest to a call (at the thread count it ran with).
    threads = torch.get_num_threads()
    try:
        for e in entries:
            torch.set_num_threads(e["threads"])
            dtype = getattr(torch, e["dtype"])
            decision = crossover.prefer_torch(dtype, e["group"], e["keys"], e["head_dim"], e["batch"] * e["heads_k"])
            assert decision == (e["torch_over_fastattn"] < 1), e
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("heads, heads_k", [(8, 8), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("prefer", [True, False], ids=["torch-kernel", "native-kernel"])
def test_auto_matches_the_reference_on_either_kernel(heads, heads_k, dtype, prefer, monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: prefer)
    used = []
    real = crossover.torch_decode
    monkeypatch.setattr(crossover, "torch_decode", lambda *a: used.append(1) or real(*a))
    q, k_cache, v_cache, k_new, v_new, lens = _inputs(heads, heads_k, dtype)
    expected = [reference.flash_attn_with_kvcache(
        q.to(ct), k_cache.to(ct).clone(), v_cache.to(ct).clone(), k_new.to(ct), v_new.to(ct), cache_seqlens=lens,
        causal=True, return_softmax_lse=True, upcast=ct == torch.float64) for ct in (torch.float64, dtype)]
    kc, vc = k_cache.clone(), v_cache.clone()
    out, lse = fastattn.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=lens, causal=True,
                                                return_softmax_lse=True)
    assert used == ([1] if prefer else [])
    check(out, lse, *expected)
    assert out[1].abs().sum() > 0  # sequence 1 sees its appended token only
    for b, n in enumerate(lens.tolist()):  # the append landed in place, either way
        assert torch.equal(kc[b, n], k_new[b, 0]) and torch.equal(vc[b, n], v_new[b, 0])


def test_explicit_cpu_backend_never_takes_torchs_kernel(monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: True)
    monkeypatch.setattr(crossover, "torch_decode", lambda *a: pytest.fail("backend='cpu' ran torch's kernel"))
    q, k_cache, v_cache, k_new, v_new, lens = _inputs(8, 8, torch.float32)
    fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens, causal=True, backend="cpu")


def test_features_the_table_does_not_measure_stay_native(monkeypatch):
    monkeypatch.setattr(crossover, "prefer_torch", lambda *a: True)
    monkeypatch.setattr(crossover, "torch_decode", lambda *a: pytest.fail("a windowed call ran torch's kernel"))
    q, k_cache, v_cache, k_new, v_new, lens = _inputs(8, 8, torch.float32)
    fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens, causal=True,
                                     window_size=(16, 0))
    fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens, softcap=5.0)


def test_lookup_takes_the_nearest_kind_then_the_nearest_length(monkeypatch):
    """Thread count, group, head dim and batch x kv heads pick the measured kind (nearest on a log
    scale, in that order); the cache length then picks the case (log-scale midpoints)."""
    def entry(keys, ratio, **kind):
        base = dict(dtype="float32", threads=1, group=1, head_dim=128, batch=4, heads_k=8)
        return dict(base, **kind, keys=keys, torch_over_fastattn=ratio)

    table = (entry(512, 0.5), entry(8192, 2.0),                      # torch short, native long
             entry(512, 3.0, group=4), entry(8192, 3.0, group=4),    # GQA: native throughout
             entry(512, 2.0, threads=2), entry(8192, 0.5, threads=2),
             entry(512, 2.0, batch=1, heads_k=2))
    monkeypatch.setattr(crossover.TABLE, "entries", lambda: table)
    crossover._by_keys.cache_clear()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert crossover.prefer_torch(torch.float32, 1, 1000, 128, 32)
        assert not crossover.prefer_torch(torch.float32, 1, 3000, 128, 32)  # past sqrt(512 * 8192) = 2048
        assert not crossover.prefer_torch(torch.float32, 3, 600, 128, 32)   # group 3 is nearer 4 than 1
        assert not crossover.prefer_torch(torch.float32, 1, 600, 128, 2)    # the batch-1, 2-kv-head kind
        assert not crossover.prefer_torch(torch.bfloat16, 1, 600, 128, 32)  # no bf16 measurement
        torch.set_num_threads(2)
        assert not crossover.prefer_torch(torch.float32, 1, 600, 64, 32)
        assert crossover.prefer_torch(torch.float32, 1, 20000, 64, 32)
    finally:
        torch.set_num_threads(threads)
        crossover._by_keys.cache_clear()
