"""Main-loop machine-code analysis, with no GPU.

* The SASS parser, loop finder and path counts on hand-written SASS;
* the analyzer on small Triton kernels whose machine code is known (tests/sass_kernels.py,
  compiled for sm_80 and sm_90a in an interpreter-free subprocess): the MMA count of one
  ``tl.dot`` per iteration is the tile's arithmetic, a tile too narrow for its warps shows
  repeated MMA work, a forced spill shows local-memory traffic, a ``tl.where`` shows selects;
* the ceilings' arithmetic against the documented throughput table;
* ``python -m fastattn info --kernels --sass --json``: every kept config of every kernel gets
  the analysis fields, over the stratified case set the other ahead-of-time tests compile
  (compiles cached on disk and shared; the full set is ``info --kernels`` itself, run by hand).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastattn.buildcheck import sass, sass_ceiling, sass_report

HERE = Path(__file__).resolve().parent

needs_nvdisasm = pytest.mark.skipif(sass.nvdisasm_path() is None, reason="nvdisasm not found (Triton ships it)")

# --------------------------------------------------------------------------- hand-written SASS

# One loop: an MMA, a branch over two selects (masking done on some iterations only), exp2,
# an ldmatrix, the loop counter; then an exit and ptxas's trailing self-loop (unreachable).
MASKED_LOOP = """
//--------------------- .text.k                  --------------------------
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0020*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*0030*/               @P0 BRA `(.L_x_1) ;
        /*0040*/                   FSEL R4, R4, -INF , P1 ;
        /*0050*/                   FSEL R5, R5, -INF , P1 ;
.L_x_1:
        /*0060*/                   MUFU.EX2 R6, R4 ;
        /*0070*/                   LDSM.16.M88.4 R8, [R20] ;
        /*0080*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0090*/                   ISETP.NE.AND P2, PT, R2, R7, PT ;
        /*00a0*/               @P2 BRA `(.L_x_0) ;
        /*00b0*/                   EXIT ;
.L_x_2:
        /*00c0*/                   BRA `(.L_x_2);
"""

# An outer loop around an inner MMA loop that spills (LDL/STL), and a wgmma with A from registers.
NESTED_LOOPS = """
//--------------------- .text.outer              --------------------------
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E.128 R8, desc[UR4][R2.64] ;
.L_x_1:
        /*0020*/                   HGMMA.64x128x16.F32 R24, R8, gdesc[UR8], R24 ;
        /*0030*/                   STL.64 [R1], R24 ;
        /*0040*/                   LDL.64 R24, [R1] ;
        /*0050*/              @!PT LDS RZ, [RZ] ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
        /*0070*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0080*/               @P2 BRA `(.L_x_0) ;
        /*0090*/                   EXIT ;
"""


def test_parser_finds_the_loop_and_counts_both_paths():
    (name, instrs), = sass.parse_sass(MASKED_LOOP).items()
    assert name == "k" and len(instrs) == 13
    assert instrs[3].target == 0x60 and instrs[10].target == 0x10
    analysis = sass.analyse_function(instrs)
    assert analysis["loops"] == 1  # the self-loop after EXIT is unreachable, so no loop
    views = analysis["main_loops"]
    sass.label_views(views)
    by_path = {v["path"]: v for v in views}
    assert set(by_path) == {"longest", "shortest"}
    longest, shortest = by_path["longest"], by_path["shortest"]
    assert longest["instructions"] == 10 and shortest["instructions"] == 8
    assert longest["select"] == 2 and shortest["select"] == 0
    assert longest["masked"] is True and shortest["masked"] is False
    assert longest["label"] == "masked, longest path" and shortest["label"] == "unmasked, shortest path"
    for v in views:
        assert (v["start"], v["end"]) == (0x10, 0xa0)
        assert v["mma"] == 1 and v["mma_flops"] == 2 * 16 * 8 * 16
        assert v["mufu"] == v["ex2"] == 1 and v["ldsm"] == 1 and v["shared_bytes"] == 4 * 128
        assert v["compare"] == 2 and v["integer"] == 1 and v["branch"] == 2


def test_cuobjdump_listing_parses_like_nvdisasm():
    """cuobjdump prints branch targets as addresses, and no labels: the same loops and counts."""
    import re

    listing = "\n\t\tFunction : k\n" + re.sub(r"`\(\.L_x_(\d+)\)", lambda m: {"0": "0x10", "1": "0x60", "2": "0xc0"}[m.group(1)],
                                               "\n".join(l for l in MASKED_LOOP.splitlines() if not l.startswith((".L", "//"))))
    (name, instrs), = sass.parse_sass(listing).items()
    assert name == "k" and instrs[3].target == 0x60 and instrs[10].target == 0x10
    ours = sass.analyse_function(instrs)["main_loops"]
    theirs = sass.analyse_function(next(iter(sass.parse_sass(MASKED_LOOP).values())))["main_loops"]
    assert ours == theirs and len(ours) == 2


def test_main_loop_is_the_innermost_mma_loop():
    (_, instrs), = sass.parse_sass(NESTED_LOOPS).items()
    analysis = sass.analyse_function(instrs)
    assert analysis["loops"] == 2
    (view,) = analysis["main_loops"]
    assert (view["start"], view["end"], view["path"]) == (0x20, 0x60, "only")
    # wgmma 64x128x16 with A from registers: a quarter of the warpgroup's work and of B's bytes per warp.
    assert view["mma_flops"] == 2 * 64 * 128 * 16 // 4
    assert view["shared_bytes"] == 128 * 16 * 2 / 4
    assert view["local_store"] == view["local_load"] == 1 and view["local_bytes"] == 2 * 32 * 8
    assert view["nop"] == 1 and view["lds"] == 0  # guarded by !PT: never executes
    assert view["ldg"] == 0  # the outer loop's load is outside the main loop


def test_ttir_dot_loops_reads_the_innermost_dot_loops():
    ttir = """
tt.func public @k(%arg0: !tt.ptr<f16> {tt.divisibility = 16 : i32}) attributes {noinline = false} {
  %0 = scf.for %i = %c0 to %n step %c1 iter_args(%a = %z) -> (tensor<64x32xf32>)  : i32 {
    %1 = tt.dot %q, %k, %a, inputPrecision = tf32 : tensor<64x16xf16> * tensor<16x32xf16> -> tensor<64x32xf32> loc(#loc1)
    %2 = "tt.reduce"(%1) <{axis = 1 : i32}> ({
    ^bb0(%x: f32, %y: f32):
      %m = arith.maxnumf %x, %y : f32
      tt.reduce.return %m : f32
    }) : (tensor<64x32xf32>) -> tensor<64xf32>
    %3 = scf.if %c -> (tensor<64x16xf32>) {
      %4 = tt.dot %p, %v, %b : tensor<64x32xf16> * tensor<32x16xf16> -> tensor<64x16xf32>
      scf.yield %4 : tensor<64x16xf32>
    } else {
      scf.yield %b : tensor<64x16xf32>
    }
    scf.yield %1 : tensor<64x32xf32>
  }
  %5 = scf.for %g = %c0 to %n step %c1 iter_args(%a = %z) -> (tensor<16x16xf32>)  : i32 {
    %6 = scf.for %j = %c0 to %n step %c1 iter_args(%b = %a) -> (tensor<16x16xf32>)  : i32 {
      %7 = tt.dot %x, %y, %b : tensor<16x64xf16> * tensor<64x16xf16> -> tensor<16x16xf32>
      scf.yield %7 : tensor<16x16xf32>
    }
    scf.yield %6 : tensor<16x16xf32>
  }
  tt.return
}
"""
    loops = sass.ttir_dot_loops(ttir)
    assert loops == [
        {"useful_flops": 2 * 64 * 32 * 16 + 2 * 64 * 16 * 32, "dots": [[64, 32, 16], [64, 16, 32]]},
        {"useful_flops": 2 * 16 * 16 * 64, "dots": [[16, 16, 64]]},
    ]


# --------------------------------------------------------------------------- ceilings


def _counts(**kw):
    c = {k: 0 for k in sass.CATEGORIES}
    c.update(instructions=0, ex2=0, mma_flops=0, mma_flops_by_kind={}, shared_bytes=0.0, local_bytes=0)
    c.update(kw)
    c["mma_flops_by_kind"] = {"f16": c["mma_flops"]} if c["mma_flops"] else {}
    return c


@pytest.mark.parametrize("arch", [80, 90])
def test_ceilings_follow_the_throughput_table(arch):
    t = sass_ceiling.THROUGHPUT[arch]
    warps = 4
    counts = _counts(instructions=100, mma=8, mma_flops=8 * 4096, shared_bytes=2048.0, mufu=4, ffma=10, fadd=6)
    useful = warps * counts["mma_flops"]
    t_mma = warps * counts["mma_flops"] / t.tensor_flops
    expect = {
        "issue_bound": t_mma / max(t_mma, warps * 100 / t.issue),
        "smem_bound": t_mma / max(t_mma, warps * 2048 / t.smem_bytes),
        "mufu_bound": t_mma / max(t_mma, warps * 4 * 32 / t.mufu),
        "fp32_bound": t_mma / max(t_mma, warps * 16 * 32 / t.fp32),
    }
    got = sass_ceiling.ceilings(counts, arch, warps, useful)
    for key, value in expect.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    assert got["static_ceiling"] == min(got[k] for k in sass_ceiling.BOUNDS)
    assert got["issue_bound"] < 1  # 100 issue slots a warp outlast 8 HMMAs on either arch
    # The same loop whose MMA work is repeated by a second set of warps reaches half as far.
    halved = sass_ceiling.ceilings(counts, arch, warps, useful / 2)
    assert halved["static_ceiling"] == pytest.approx(got["static_ceiling"] / 2, abs=1e-4)
    d = sass_ceiling.derived(counts, warps, useful / 2)
    assert d["redundancy"] == 2.0 and d["non_mma_per_4096_flops"] == 92 * 4096 / (8 * 4096)
    assert d["shared_bytes_per_mma_flop"] == round(2048 / (8 * 4096), 4)
    assert sass_ceiling.ceilings(_counts(instructions=10), arch, warps, None)["static_ceiling"] is None


def test_hopper_tensor_cores_make_the_same_loop_issue_bound_sooner():
    counts = _counts(instructions=100, mma=8, mma_flops=8 * 4096)
    a100 = sass_ceiling.ceilings(counts, 80, 4, 4 * 8 * 4096)["issue_bound"]
    h100 = sass_ceiling.ceilings(counts, 90, 4, 4 * 8 * 4096)["issue_bound"]
    ratio = sass_ceiling.THROUGHPUT[90].tensor_flops / sass_ceiling.THROUGHPUT[80].tensor_flops
    assert h100 == pytest.approx(a100 / ratio, abs=1e-4)


# --------------------------------------------------------------------------- known Triton kernels


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """Every tests/sass_kernels.py case: (main-loop views, useful FLOPs per iteration from the IR,
    warps, tile constexprs)."""
    pytest.importorskip("triton")
    if sass.nvdisasm_path() is None:
        pytest.skip("nvdisasm not found (Triton ships it)")
    out = tmp_path_factory.mktemp("sass_kernels")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real, no GPU needed
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    res = subprocess.run([sys.executable, str(HERE / "sass_kernels.py"), str(out)], env=env, capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    sys.path.insert(0, str(HERE))
    try:
        import sass_kernels
    finally:
        sys.path.remove(str(HERE))
    result = {}
    for name, (_, _, warps, _) in sass_kernels.CASES.items():
        (_, instrs), = sass.disassemble(out / f"{name}.cubin").items()
        analysis = sass.analyse_function(instrs)
        sass.label_views(analysis["main_loops"])
        (dot_loop,) = sass.ttir_dot_loops((out / f"{name}.ttir").read_text())
        result[name] = (analysis["main_loops"], dot_loop["useful_flops"], warps, sass_kernels.CASES[name][1])
    return result


def test_one_dot_per_iteration_is_the_tiles_hmma_count(known):
    views, useful, warps, tile = known["tile64_sm80"]
    (view,) = views
    assert useful == 2 * tile["BM"] * tile["BN"] * tile["BK"]
    # m16n8k16 HMMAs covering the BM x BN x BK tile, shared evenly by the warps.
    expected = (tile["BM"] // 16) * (tile["BN"] // 8) * (tile["BK"] // 16) // warps
    assert view["mma"] == expected
    assert view["mma_flops"] == expected * 2 * 16 * 8 * 16
    assert sass_ceiling.derived(view, warps, useful)["redundancy"] == 1.0
    assert view["ldsm"] > 0 and view["ldgsts"] > 0 and view["barrier"] > 0  # operands staged by cp.async
    ceil = sass_ceiling.ceilings(view, 80, warps, useful)
    assert 0 < ceil["static_ceiling"] <= 1


def test_one_dot_per_iteration_on_hopper_is_wgmma(known):
    views, useful, warps, tile = known["tile64_sm90"]
    (view,) = views
    # A warpgroup's m64nNk16 wgmma: BK / 16 of them per iteration for the 64-row tile (4 warps = 1 warpgroup).
    assert view["mma"] == tile["BK"] // 16
    assert view["mma_flops"] * warps == useful
    assert view["shared_bytes"] > 0  # wgmma reads its operands from shared memory


def test_a_tile_narrower_than_its_warps_repeats_mma_work(known):
    views, useful, warps, tile = known["narrow_8warps_sm80"]
    (view,) = views
    distinct = (tile["BM"] // 16) * (tile["BN"] // 8) * (tile["BK"] // 16)  # m16n8k16 pieces of the tile
    assert distinct < warps  # at most `distinct` warps can hold different work
    redundancy = sass_ceiling.derived(view, warps, useful)["redundancy"]
    assert redundancy == view["mma"] * warps / distinct
    assert redundancy >= warps / distinct
    ceil = sass_ceiling.ceilings(view, 80, warps, useful)
    assert ceil["static_ceiling"] <= 1 / redundancy + 1e-9


def test_forced_spill_shows_local_memory_traffic_in_the_loop(known):
    (spilled,), _, _, _ = known["tile128_spill_sm80"]
    (clean,), _, _, _ = known["tile128_sm80"]
    assert clean["local_load"] == clean["local_store"] == clean["local_bytes"] == 0
    assert spilled["local_load"] > 0 and spilled["local_store"] > 0
    assert spilled["local_bytes"] >= 32 * 4 * (spilled["local_load"] + spilled["local_store"])
    assert spilled["mma"] == clean["mma"]


def test_where_in_the_loop_shows_selects(known):
    (masked,), _, warps, tile = known["tile64_masked_sm80"]
    (plain,), _, _, _ = known["tile64_sm80"]
    per_thread = tile["BM"] * tile["BN"] // (32 * warps)  # elements of the masked product a thread holds
    assert masked["select"] - plain["select"] >= per_thread
    assert masked["instructions"] > plain["instructions"]


# --------------------------------------------------------------------------- every kept config


@pytest.fixture(scope="module")
def sass_report_run():
    """The ``info --kernels --sass`` report of every kernel (compiled once, cached on disk), over
    the stratified AOT case set (every kernel, variant and head-dim tile at least once)."""
    from fastattn.buildcheck import kernel_report
    from fastattn.buildcheck import triton_aot as _aot

    real = kernel_report.collect  # the tests patch kernel_report.collect with the wrapper below
    calls = []
    cached = {}

    def collect(archs, sass=False, **kw):
        calls.append(dict(archs=list(archs), sass=sass))
        key = (tuple(archs), sass)
        if key not in cached:
            # The Triton half over the stratified case set the other AOT tests compile too (the
            # full set is minutes more of compiling, cold; `info --kernels` itself reports it).
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_aot, "discover_cases", functools.partial(_aot.discover_cases, stratified=True))
                cached[key] = real(archs, sass=sass, **kw)
        return cached[key]

    return collect, calls


@needs_nvdisasm
def test_info_kernels_sass_json_has_the_fields_for_every_kept_config(sass_report_run, monkeypatch, capsys):
    from fastattn.buildcheck import kernel_report
    from fastattn.__main__ import main

    collect, calls = sass_report_run
    monkeypatch.setattr(kernel_report, "collect", collect)
    status = main(["info", "--kernels", "--sass", "--json"])
    records = json.loads(capsys.readouterr().out)
    assert calls[-1] == {"archs": [80, 90], "sass": True}
    assert status == (1 if collect([80, 90], sass=True).problems() else 0)
    from fastattn.buildcheck import triton_aot as _aot

    kept = _aot.kernel_reports((80, 90), cases=_aot.discover_cases(stratified=True))  # cached by the report
    triton = [r for r in records if r["backend"] == "triton"]
    assert len(triton) == len(kept)  # one record per kept config and arch
    from fastattn.buildcheck import ptxas

    has_nvcc = ptxas.nvcc_path() is not None  # CI has it; elsewhere the CUDA C++ half is reported missing
    assert {r["backend"] for r in records} == ({"triton", "cuda"} if has_nvcc else {"triton"})
    with_mma = set()
    for r in records:
        where = f"{r['backend']} {r['kernel']} {r['config']} {r['arch']}"
        s = r["sass"]
        assert list(s)[:len(sass_report.SASS_FIELDS)] == list(sass_report.SASS_FIELDS), where
        assert s["error"] is None, f"{where}: {s['error']}"
        assert s["arch"] in ("sm_80", "sm_90a") and s["loops"] is not None, where
        assert not any(k in r for k in sass_report.ARTEFACT_KEYS), where
        for v in s["main_loops"]:
            assert list(v) == list(sass_report.VIEW_FIELDS), where
            assert v["mma"] > 0 and v["mma_flops"] > 0 and v["unknown_mma"] == 0, where
            assert v["instructions"] == sum(v[c] for c in sass.CATEGORIES), where
            assert 0 < v["static_ceiling"] <= 1, where
            assert v["static_ceiling"] == min(v[b] for b in sass_ceiling.BOUNDS), where
            assert v["non_mma_per_4096_flops"] >= 0 and v["shared_bytes_per_mma_flop"] >= 0, where
            if r["backend"] == "triton" or r["kernel"] == "flash_fwd_kernel":
                # The tile's FLOPs are known (Triton IR / CUDA tile traits): no warp does less than its share.
                assert v["useful_flops"] and v["redundancy"] >= 0.999, where
            if v["local_bytes"]:
                assert r["spill_bytes"] or r.get("stack_bytes"), f"{where}: local traffic but no spill reported"
        if s["main_loops"]:
            with_mma.add(r["kernel"])
            assert s["static_ceiling"] is not None, where
    # The tensor-core kernels have main loops; the elementwise and reduction ones do not.
    assert {"attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq", "attention_fwd_tma", "attention_bwd_dkdv_tma",
            "attention_bwd_dq_tma", "decode_split", "feed_forward_gate_up_fwd", "feed_forward_gate_up_bwd"} | ({"flash_fwd_kernel"} if has_nvcc else set()) <= with_mma
    assert not with_mma & {"softmax_fwd", "softmax_bwd", "gated_act_fwd", "bias_gelu_fwd", "attention_bwd_delta"}
    if not has_nvcc:
        return
    # The causal CUDA C++ forward masks only the diagonal tiles: its masked and unmasked paths are reported apart.
    causal = [r for r in records if r["kernel"] == "flash_fwd_kernel" and r["config"].endswith("true")]
    assert causal
    for r in causal:
        masked = {v["masked"] for v in r["sass"]["main_loops"]}
        assert masked == {True, False}, r["config"]
        assert r["sass"]["masked_static_ceiling"] <= r["sass"]["static_ceiling"]


@needs_nvdisasm
def test_info_kernels_sass_text_table_says_static_ceiling(sass_report_run, monkeypatch, capsys):
    from fastattn.buildcheck import kernel_report
    from fastattn.__main__ import main

    collect, calls = sass_report_run
    monkeypatch.setattr(kernel_report, "collect", collect)
    main(["info", "--sass"])  # --sass implies --kernels
    out = capsys.readouterr().out
    assert calls[-1]["sass"] is True
    assert "STATIC upper bounds" in out and "static ceiling" in out
    assert "attention_fwd" in out
    assert "not analysed" not in out
