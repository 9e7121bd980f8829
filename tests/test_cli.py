"""The ``python -m fastattn`` command line: info, info --kernels, bench, verify, and the
measurement helpers behind bench (FLOP counts, peaks, timers, environment record)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import fastattn
from fastattn import dispatch, testing
from fastattn.buildcheck import kernel_report
from fastattn.cli import main
from fastattn.cli.bench import load_harness

load_harness()  # benchmarks/fastattn_bench of this checkout, importable as fastattn_bench from here on
from fastattn_bench import impls, measure, peaks, schema  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- FLOP and byte counts


def _hand_count_attention(batch, heads, lq, lk, d, dv, causal):
    """FLOPs of S = Q K^T and O = P V counted entry by entry: one multiply and one add per
    term of every dot product; causal keeps half of the score matrix (flash-attn's count)."""
    total = 0
    for _ in range(batch * heads):
        for _i in range(lq):
            for _j in range(lk):
                total += 2 * d  # S[i, j] = sum_k Q[i, k] K[j, k]
                total += 2 * dv  # O[i, :] += P[i, j] V[j, :]
    return total / 2 if causal else total


@pytest.mark.parametrize("shape", [(1, 1, 4, 4, 2, 2), (2, 3, 5, 7, 3, 4), (1, 2, 8, 8, 16, 16)],
                         ids=["tiny", "rect-dv", "square"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_flops_match_hand_count(shape, causal):
    b, h, lq, lk, d, dv = shape
    hand = _hand_count_attention(b, h, lq, lk, d, dv, causal)
    assert measure.attention_flops(b, h, lq, lk, d, causal, "fwd", head_dim_v=dv) == hand
    # Backward: five matmuls (S recomputed, dV, dP, dQ, dK) against the forward's two.
    assert measure.attention_flops(b, h, lq, lk, d, causal, "bwd", head_dim_v=dv) == hand * 5 / 2
    assert measure.attention_flops(b, h, lq, lk, d, causal, "fwd+bwd", head_dim_v=dv) == hand * 7 / 2


def test_attention_flops_match_torch_flop_counter():
    """An independent count: torch's FlopCounterMode over the matmul-based reference."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = (torch.randn(2, 4, 48, 32) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        fastattn.reference.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == measure.attention_flops(2, 4, 48, 48, 32)


def test_flop_count_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        measure.attention_flops(1, 1, 4, 4, 2, direction="backward")


def test_other_counts_match_hand_count():
    # feed-forward: three (tokens x dim x hidden) matmuls, 2 FLOPs per multiply-add.
    assert measure.feed_forward_flops(3, 4, 5) == 3 * (2 * 3 * 4 * 5)
    assert measure.feed_forward_flops(3, 4, 5, "fwd+bwd") == 3 * 3 * (2 * 3 * 4 * 5)
    # decoding: K and V caches (2 x 2 batches x 10 tokens x 1 kv head x 8 dims) + q and out (2 x 2 x 1 x 4 x 8)
    assert measure.kvcache_bytes(2, 4, 1, 10, 8, element_size=2) == (2 * 2 * 10 * 1 * 8 + 2 * 2 * 1 * 4 * 8) * 2
    # SwiGLU forward: read gate and up, write out.
    assert measure.gated_activation_bytes(6, 7, 4) == 3 * 6 * 7 * 4


def test_timing_summary_and_rotation():
    t = measure.summarize([5.0, 1.0, 2.0, 4.0, 3.0], "perf_counter")
    assert (t.median, t.p20, t.p80, t.reps) == (3.0, 1.8, 4.2, 5)
    assert math.isclose(t.spread, (4.2 - 1.8) / 3.0)
    calls = []
    timing = measure.time_cpu(calls.append, warmup=2, min_reps=4, max_reps=6, budget_s=0.0)
    assert timing.reps == 4 and calls == [0, 1, 2, 3, 4, 5]  # warm-up calls, then rotated indices
    order = []
    timings = measure.time_cpu_interleaved([lambda i: order.append(("a", i)), lambda i: order.append(("b", i))],
                                           warmup=1, min_reps=3, max_reps=3, budget_s=0.0)
    assert [t.reps for t in timings] == [3, 3]
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert measure.rotation_count(1 << 30, torch.device("cpu")) == 1
    assert measure.rotation_count(1 << 20, torch.device("cpu")) == 8


# --------------------------------------------------------------------------- peaks


@pytest.mark.parametrize("name,entry,gbps", [
    ("NVIDIA A100-SXM4-80GB", "A100 80GB", 2039), ("NVIDIA A100-PCIE-40GB", "A100 PCIe", 1555),
    ("NVIDIA H100 80GB HBM3", "H100", 3350), ("NVIDIA H100 PCIe", "H100 PCIe", 2000),
    ("NVIDIA H200", "H200", 4800), ("NVIDIA L4", "L4", 300), ("NVIDIA L40S", "L40S", 864),
], ids=["a100-sxm-80", "a100-pcie-40", "h100-sxm", "h100-pcie", "h200", "l4", "l40s"])
def test_peak_table_lookup(name, entry, gbps):
    p = peaks.table_peak(name)
    assert p.device == entry and p.gbps == gbps
    assert p.tflops_for(torch.bfloat16) > p.tflops_for("float32") > 0


def test_unknown_devices_are_measured():
    assert peaks.table_peak("NVIDIA A10G") is None  # whole-word match: not the A10's entry
    p = peaks.device_peak("cpu", dtypes=(torch.float32,))
    assert p.source.startswith("measured") and p.tflops["float32"] > 0 and p.gbps > 0


# --------------------------------------------------------------------------- info


def test_info_prints_versions_backends_extensions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for text in (torch.__version__, f"fastattn {fastattn.__version__}", "triton", "nvcc", "Compiled extensions:",
                 "fastattn._C", "fastattn._cuda", "fastattn._cuda_sim", "Backends:", "reference  available"):
        assert text in out
    for name, why in dispatch.available_backends("cpu").items():
        assert name in out
        if why is not None:
            assert "unavailable" in out


def test_info_json_is_complete(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["torch"] == torch.__version__ and data["fastattn"] == fastattn.__version__
    assert [e["name"] for e in data["extensions"]] == ["fastattn._C", "fastattn._cuda", "fastattn._cuda_sim"]
    assert data["backends"]["availability"]["cpu"]["reference"] is None
    for ext in data["extensions"]:
        if ext["name"] == "fastattn._cuda" and ext["loaded"]:
            import fastattn._cuda as cuda

            assert ext["archs"] == cuda.compiled_arch_names(), "info lists the archs with their suffixes"
            assert [int(a.rstrip("a")) for a in ext["archs"]] == cuda.compiled_archs()


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "fastattn", "info"], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Backends:" in done.stdout


# --------------------------------------------------------------------------- info --kernels


def test_theoretical_occupancy_hand_values():
    # sm_80, 4 warps of 128 registers: 4096 registers per warp, 16384 per block -> 4 blocks = 16/64 warps.
    assert kernel_report.theoretical_occupancy(80, 128, 128, 0) == 0.25
    # sm_80, 8 warps, 48 KiB + 1 KiB reserved per block -> 3 blocks in 164 KiB = 24/64 warps.
    assert kernel_report.theoretical_occupancy("sm_80", 256, 32, 48 * 1024) == 0.375
    # sm_86 holds 48 warps: 8 warps of 32 registers -> 6 blocks, full occupancy.
    assert kernel_report.theoretical_occupancy(86, 256, 32, 0) == 1.0
    # More shared memory than a block may have on sm_86 (99 KiB) but not on sm_90 (227 KiB).
    assert kernel_report.theoretical_occupancy(86, 128, 64, 120 * 1024) == 0.0
    assert kernel_report.theoretical_occupancy("sm_90a", 128, 64, 120 * 1024) == 0.0625


@pytest.fixture(scope="module")
def one_case_report():
    """The real report, with the Triton AOT source restricted to its first case (a compile
    takes seconds); the CUDA source as it is (cached on disk by source hash)."""
    aot = pytest.importorskip("fastattn.buildcheck.triton_aot")
    cases = aot.discover_cases()
    if not cases:
        pytest.skip("the Triton AOT source declares no cases yet")
    mp = pytest.MonkeyPatch()
    mp.setattr(aot, "kernel_reports", lambda archs, _f=aot.kernel_reports: _f(archs, cases=cases[:1]))
    try:
        return kernel_report.collect((80, 90))
    finally:
        mp.undo()


def test_info_kernels_json_records(one_case_report, monkeypatch, capsys):
    monkeypatch.setattr(kernel_report, "collect", lambda archs: one_case_report)
    assert main(["info", "--kernels", "--json"]) == (1 if one_case_report.problems() else 0)
    records = json.loads(capsys.readouterr().out)
    assert records and records == json.loads(json.dumps(one_case_report.records, default=str))
    triton_records = [r for r in records if r["backend"] == "triton"]
    assert {r["arch"] for r in triton_records} == {"sm_80", "sm_90"}
    problems = "\n".join(one_case_report.problems())
    for r in records:
        assert list(r)[:8] == list(kernel_report.FIELDS)
        assert r["backend"] in ("triton", "cuda") and r["arch"].startswith("sm_")
        if not r.get("error"):
            assert r["registers"] > 0 and r["shared_memory_bytes"] >= 0 and r["spill_bytes"] >= 0
            if r["occupancy"] is None:  # never silently: a record without occupancy is a reported problem
                assert f"{r['kernel']} [{kernel_report._config_text(r['config'])}] {r['arch']}: occupancy unknown" \
                    in problems
            else:
                assert 0 <= r["occupancy"] <= 1


def test_info_kernels_table(one_case_report, monkeypatch, capsys):
    monkeypatch.setattr(kernel_report, "collect", lambda archs: one_case_report)
    main(["info", "--kernels"])
    out = capsys.readouterr().out
    assert "occupancy" in out and "sm_80" in out and f"{len(one_case_report.records)} records" in out
    for backend, why in one_case_report.missing.items():
        assert f"{backend}: not reported: {why}" in out


def test_info_kernels_reports_missing_sources_without_records(monkeypatch, capsys):
    monkeypatch.setattr(kernel_report, "_TRITON_SOURCES", (("fastattn.no_such_module", "kernel_reports"),))
    monkeypatch.setattr(kernel_report, "_CUDA_SOURCES", (("fastattn.no_such_module2", "kernel_reports"),))
    assert main(["info", "--kernels"]) == 0
    out = capsys.readouterr().out
    assert "triton: not reported" in out and "cuda: not reported" in out and "0 records" in out
    assert main(["info", "--kernels", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "not reported" in captured.err


def test_kernel_report_flags_spills_and_oversized_shared_memory():
    report = kernel_report.KernelReport(records=[
        kernel_report._normalise({"kernel": "k", "config": {"num_warps": 4}, "arch": 80, "registers": 64,
                                  "shared_memory_bytes": 1024, "spill_bytes": 16}, "triton"),
        kernel_report._normalise({"kernel": "k2", "config": "", "arch": "sm_86", "registers": 64,
                                  "shared_memory_bytes": 120 * 1024, "spill_bytes": 0, "threads_per_block": 128},
                                 "cuda"),
    ])
    assert report.records[0]["occupancy"] == 0.5 and report.records[1]["occupancy"] == 0.0
    problems = "\n".join(report.problems())
    assert "spills 16 bytes" in problems and "shared memory" in problems


# --------------------------------------------------------------------------- bench


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory):
    """One ``bench --tiny`` run shared by the bench tests (it takes seconds)."""
    tmp = tmp_path_factory.mktemp("bench")
    path, png = tmp / "bench.json", tmp / "bench.png"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["bench", "--tiny", "--device", "cpu", "--budget", "0.005", "--json", str(path),
                   "--markdown", "--plot", str(png)])
    return rc, json.loads(path.read_text()), png, stdout.getvalue()


def test_bench_json_matches_schema(bench_output):
    rc, result, _, _ = bench_output
    assert rc == 0
    assert schema.validate(result) == []
    env = result["environment"]
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert "-m fastattn" in env["command"] or "pytest" in env["command"]
    assert env["cpu_model"] and env["os"] and env["fastattn"] == fastattn.__version__


def test_schema_catches_problems(bench_output):
    _, result, _, _ = bench_output
    broken = json.loads(json.dumps(result))
    del broken["environment"]["torch"]
    ok_row = next(r for r in broken["rows"] if r["status"] == "ok")
    ok_row["median_s"] = -1.0
    problems = "\n".join(schema.validate(broken))
    assert "missing 'torch'" in problems and "median_s: not positive" in problems


def test_bench_rows_cover_every_family_with_ratios(bench_output):
    _, result, _, _ = bench_output
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    for family in ("attention", "kvcache", "activation", "feed_forward"):
        fam = [r for r in ok if r["family"] == family]
        assert any(r["kind"] == "fastattn" for r in fam), family
        assert any(r["kind"] == "peer" for r in fam), family
    by_case = {}
    for r in ok:
        by_case.setdefault(r["case"], []).append(r)
    for rows in by_case.values():
        peers = {r["impl"]: r for r in rows if r["kind"] == "peer"}
        for r in rows:
            assert set(r["ratios"]) == set(peers) - {r["impl"]}
            for name, ratio in r["ratios"].items():
                assert math.isclose(ratio, peers[name]["median_s"] / r["median_s"])
            expected = r["flops"] / r["median_s"] / 1e12 if r["metric"] == "TFLOP/s" else r["bytes"] / r["median_s"] / 1e9
            assert math.isclose(r["value"], expected) and r["pct_of_peak"] > 0 and r["spread"] >= 0
    # Correctness tools are never timed on a CPU: no Triton interpreter, no simulated CUDA.
    assert not any(r["impl"] in ("fastattn:triton", "fastattn:cuda") for r in result["rows"])


def test_bench_markdown_plot_and_table(bench_output):
    _, result, png, out = bench_output
    assert "Attention" in out and "vs sdpa_math" in out
    cite = out.rindex("#### How to cite these numbers")
    assert "command:" in out[cite:] and result["environment"]["command"] in out[cite:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sizes_option(tmp_path):
    path = tmp_path / "b.json"
    assert main(["bench", "--device", "cpu", "--budget", "0.002", "--impls", "fastattn:auto,sdpa_math",
                 "--sizes", "attention:seqlen=16,head_dim=8,causal=1,direction=bwd", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {r["impl"] for r in rows} == {"fastattn:auto", "sdpa_math"}
    assert rows[0]["shape"]["seqlen"] == 16 and rows[0]["direction"] == "bwd" and rows[0]["shape"]["causal"]


def test_bench_without_the_harness_says_what_to_do(monkeypatch, tmp_path, capsys):
    """A fastattn without its source checkout (a wheel install) has no benchmark harness: bench
    exits with 2 and says where it looked and what to do, before parsing any bench option."""
    from fastattn.cli import bench as bench_cli

    monkeypatch.delitem(sys.modules, "fastattn_bench")
    on_path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "fastattn_bench"))]
    monkeypatch.setattr(sys, "path", on_path)
    missing = tmp_path / "benchmarks" / "fastattn_bench"
    monkeypatch.setattr(bench_cli, "_candidates", lambda: [missing])
    assert main(["bench", "--quick", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "source checkout" in err and "root" in err


# --------------------------------------------------------------------------- verify


def test_verify_passes_and_prints_errors(capsys):
    rc = main(["verify", "--backends", "reference", "--families", "swiglu,softmax,sdpa", "--dtypes", "float32,bfloat16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FAIL" not in out and " pass" in out and "<=" in out
    assert "0 failed" in out


def test_verify_every_available_backend_on_one_family(capsys):
    rc = main(["verify", "--families", "swiglu", "--dtypes", "float32,bfloat16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name, why in dispatch.available_backends("cpu").items():
        if why is None and name in dispatch.implementations("gated_act_fwd"):
            assert f"\n{name} " in out


def _broken(fn, delta):
    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        if isinstance(result, (tuple, list)):
            return type(result)(r + delta if i == 0 else r for i, r in enumerate(result))
        return result + delta
    return wrapped


@pytest.mark.parametrize("op", ["gated_act_fwd", "gated_act_bwd", "attention_fwd"], ids=["fwd", "bwd", "attention"])
def test_verify_fails_on_a_broken_kernel(monkeypatch, capsys, op):
    impl = dispatch.implementations(op)["reference"]
    # An error of 1e-3 is far below what a loose check would notice in bf16, and far above the bound in fp32.
    monkeypatch.setitem(dispatch._IMPLS, (op, "reference"),
                        dispatch.Impl(op, "reference", _broken(impl.fn, 1e-3), impl.supports))
    family = "sdpa" if op.startswith("attention") else "swiglu"
    rc = main(["verify", "--backends", "reference", "--families", family, "--dtypes", "float32"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out


def test_verify_rejects_unknown_names(capsys):
    assert main(["verify", "--backends", "tritonn"]) == 2
    assert "unknown --backends tritonn" in capsys.readouterr().err
    assert main(["verify", "--dtypes", "float64x"]) == 2


def test_verify_fails_on_nan():
    got = torch.tensor([1.0, float("nan")])
    err, tol = testing.error_and_bound(got, torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0]))
    assert err > tol


def test_cuda_backward_is_named_cuda_in_reports(capsys):
    """The cuda backend's attention backward is its own CUDA C++ kernel: verify, info and bench's
    record of what ran name cuda for both directions and no delegation."""
    why = dispatch.unavailable_reason("cuda", torch.device("cpu"))
    if why is not None:
        pytest.skip(f"cuda backend (simulated build) unavailable: {why}")
    assert dispatch.runs_on("attention_bwd", "cuda", "cpu") == "cuda"
    assert dispatch.runs_on("attention_fwd", "cuda", "cpu") == "cuda"

    rc = main(["verify", "--backends", "cuda", "--families", "sdpa", "--dtypes", "float16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fwd+bwd" in out and "fwd+bwd by" not in out

    assert main(["info", "--json"]) == 0
    assert "cuda" not in json.loads(capsys.readouterr().out)["backends"]["delegated"].get("cpu", {})

    runner = impls.FastattnRunner("cuda")
    q, k, v = (testing.randn(1, 2, 17, 64, dtype=torch.float16, seed=s, requires_grad=True) for s in range(3))
    with impls.record_selection(runner):
        fastattn.scaled_dot_product_attention(q, k, v, is_causal=True, backend="cuda").sum().backward()
    assert runner.last_selected == "cuda"


def test_verify_entry_point_exit_status():
    done = subprocess.run([sys.executable, "-m", "fastattn", "verify", "--backends", "reference", "--families",
                           "swiglu", "--dtypes", "float32"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pass" in done.stdout


@pytest.mark.slow
def test_verify_full_sweep_on_this_machine(capsys):
    rc = main(["verify"])
    out = capsys.readouterr().out
    assert rc == 0, out
