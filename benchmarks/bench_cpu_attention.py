"""Native CPU attention vs torch's SDPA (flash CPU kernel and math path), same process.

Two ways to run it:

* ``pytest benchmarks/bench_cpu_attention.py --benchmark-only`` (pytest-benchmark): the
  target shape ``(1, 8, 2048, 128)``, causal and not, fp32 and bf16, forward and
  forward+backward, one benchmark per (implementation, case).
* ``python benchmarks/bench_cpu_attention.py [--sweep | --seqlens 2048 --head-dims 64,128]
  [--threads 1,2] [--memory] [--json P]``:
  the plain functions below, which interleave the implementations call by call (so a
  change in machine load hits all of them alike) and print GFLOP/s, the median time, the
  spread and the ratio to each torch path. ``FASTATTN_CPU_ISA=avx2`` (or ``avx512``) runs
  the native kernels' lower instruction-set paths on a CPU that has more. ``python -m
  fastattn bench --device cpu`` times the same cases (it builds them with
  :class:`fastattn_bench.cases.AttentionCase`).

FLOPs follow flash-attn's count (``fastattn_bench.measure.attention_flops``): causal halves
the score matrix, backward is 2.5x the forward. Peak memory is measured in a fresh
subprocess per (implementation, seqlen) as the growth of the peak resident set size (Linux
VmHWM, reset just before the call) over the resident size with the inputs allocated, which
sees the kernels' own scratch (malloc) as well as torch's allocations.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastattn_bench import impls  # noqa: E402
from fastattn_bench.cases import AttentionCase  # noqa: E402
from fastattn_bench.environment import environment  # noqa: E402
from fastattn_bench.measure import attention_flops  # noqa: E402
from fastattn_bench.memory import peak_rss_growth  # noqa: E402

IMPLS = ("fastattn:cpu", "sdpa_flash", "sdpa_math")
PEERS = ("sdpa_flash", "sdpa_math")
TARGET = dict(batch=1, heads=8, seqlen=2048, head_dim=128)
MATH_MAX_SEQLEN = 4096  # the math path materialises B*H*L*L scores (and more for backward)


def _runner(name: str):
    if name.startswith("fastattn:"):
        return impls.FastattnRunner(name.split(":", 1)[1])
    return impls.SDPARunner(name.split("_", 1)[1])


def _callable(runner, case: AttentionCase, inputs: dict):
    """A no-argument call running ``case.direction`` of ``runner`` on ``inputs``."""
    if case.direction == "fwd":
        def fn():
            with torch.no_grad():
                return runner.forward(case, inputs)
        return fn

    def fn():
        out = runner.forward(case, inputs)
        return torch.autograd.grad(out, [inputs["q"], inputs["k"], inputs["v"]], inputs["dout"])
    return fn


def cases(seqlens: Iterable[int] = (2048,), head_dims: Iterable[int] = (128,),
          dtypes: Iterable[str] = ("float32", "bfloat16"), causal: Iterable[bool] = (True, False),
          directions: Iterable[str] = ("fwd", "fwd+bwd"), batch: int = 1, heads: int = 8) -> list[AttentionCase]:
    """The benchmark grid as :class:`AttentionCase` records (the CLI's case type)."""
    return [AttentionCase(batch, heads, heads, L, d, c, dt, direction)
            for L in seqlens for d in head_dims for dt in dtypes for c in causal for direction in directions]


def measure(case: AttentionCase, impl_names: Iterable[str] = IMPLS, reps: int = 5,
            threads: Optional[int] = None) -> list[dict]:
    """Time ``case`` for each implementation, interleaved call by call, ``reps`` timed calls
    each after one warm-up. Returns one row per implementation with ``median_s``, ``min_s``,
    ``spread`` ((p80 - p20) / median), ``gflops`` (from the median) and ``ratios`` (peer
    median / this median, > 1: faster than that peer). Also the process CPU time per call
    (``cpu_median_s``, ``gflop_per_cpu_s`` and ``cpu_ratios``): on a machine shared with
    other work the wall time depends on the load, the CPU time much less (at one thread it
    is the work the call needs; at more threads it includes OpenMP's spin-waiting)."""
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        inputs = case.make_inputs(torch.device("cpu"), requires_grad=case.direction != "fwd")
        flops = attention_flops(case.batch, case.heads, case.seqlen, case.seqlen, case.head_dim, case.causal,
                                case.direction)
        rows, calls = [], []
        for name in impl_names:
            row = {"case": case.name, "impl": name, "threads": torch.get_num_threads(), **case.as_dict(),
                   "status": "skipped", "reason": None}
            rows.append(row)
            if name == "sdpa_math" and case.seqlen > MATH_MAX_SEQLEN:
                row["reason"] = f"math path materialises L^2 scores; skipped above L={MATH_MAX_SEQLEN}"
                continue
            runner = _runner(name)
            ctx = runner.context()
            with ctx:
                fn = _callable(runner, case, inputs)
                fn()  # warm-up (and first-call allocations) outside the timer
            calls.append((row, runner, fn, [], []))
        for _ in range(reps):
            for row, runner, fn, samples, cpu_samples in calls:
                with runner.context():
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    samples.append(time.perf_counter() - t0)
                    cpu_samples.append(time.process_time() - c0)
        for row, _, _, samples, cpu_samples in calls:
            cpu_med = statistics.median(cpu_samples)
            row.update(cpu_median_s=cpu_med, gflop_per_cpu_s=flops / cpu_med / 1e9)
            s = sorted(samples)
            med = statistics.median(s)
            p20, p80 = s[int(0.2 * (len(s) - 1))], s[int(round(0.8 * (len(s) - 1)))]
            row.update(status="ok", median_s=med, min_s=s[0], spread=(p80 - p20) / med, reps=len(s),
                       gflops=flops / med / 1e9)
        ok = [r for r in rows if r["status"] == "ok"]
        for r in ok:
            r["ratios"] = {p["impl"]: p["median_s"] / r["median_s"] for p in ok if p["impl"] in PEERS and p is not r}
            r["cpu_ratios"] = {p["impl"]: p["cpu_median_s"] / r["cpu_median_s"]
                               for p in ok if p["impl"] in PEERS and p is not r}
        return rows
    finally:
        torch.set_num_threads(prev_threads)


def run(case_list: Iterable[AttentionCase], impl_names: Iterable[str] = IMPLS, reps: int = 5,
        threads: Iterable[Optional[int]] = (None,)) -> list[dict]:
    """:func:`measure` over every case and thread count; prints each row as it is measured."""
    rows = []
    for t in threads:
        for case in case_list:
            new = measure(case, impl_names, reps, t)
            for r in new:
                print(format_row(r), flush=True)
            rows.extend(new)
    return rows


def format_row(r: dict) -> str:
    head = f"{r['case']:<44} thr={r['threads']} {r['impl']:<13}"
    if r["status"] != "ok":
        return f"{head} skipped: {r['reason']}"
    ratios = " ".join(f"x{v:.2f} vs {k}" for k, v in r.get("ratios", {}).items())
    cpu = " ".join(f"x{v:.2f}" for v in r.get("cpu_ratios", {}).values())
    return (f"{head} {r['gflops']:7.1f} GFLOP/s  median {r['median_s'] * 1e3:8.1f} ms  "
            f"min {r['min_s'] * 1e3:8.1f} ms  spread {r['spread']:.2f}  {ratios}  |  "
            f"{r['gflop_per_cpu_s']:6.1f} GFLOP/cpu-s {cpu}")


# ------------------------------------------------------------------------------ peak memory

_MEMORY_SETUP = """
import torch
from fastattn_bench.cases import AttentionCase
from bench_cpu_attention import _runner, _callable
runner = _runner({impl!r})
warm = AttentionCase(1, {heads}, {heads}, 128, {head_dim}, {causal}, {dtype!r}, {direction!r})
with runner.context():
    _callable(runner, warm, warm.make_inputs(torch.device("cpu"), requires_grad=warm.direction != "fwd"))()
case = AttentionCase(1, {heads}, {heads}, {seqlen}, {head_dim}, {causal}, {dtype!r}, {direction!r})
fn = _callable(runner, case, case.make_inputs(torch.device("cpu"), requires_grad=case.direction != "fwd"))

def call():
    with runner.context():
        return fn()
"""


def peak_memory(impl: str, seqlen: int, dtype: str = "float32", direction: str = "fwd", heads: int = 8,
                head_dim: int = 128, causal: bool = True) -> Optional[int]:
    """Bytes by which one call raises the process's peak RSS over the RSS with its inputs
    allocated (fresh process, after a warm-up call at seqlen 128; Linux only): outputs,
    saved tensors and every scratch buffer the call touches."""
    return peak_rss_growth(_MEMORY_SETUP.format(heads=heads, seqlen=seqlen, head_dim=head_dim, causal=causal,
                                                dtype=dtype, direction=direction, impl=impl))


def memory_rows(seqlens=(2048, 4096, 8192), impl_names=("fastattn:cpu", "sdpa_flash", "sdpa_math"),
                dtype="float32", direction="fwd") -> list[dict]:
    rows = []
    for impl in impl_names:
        for L in seqlens:
            if impl == "sdpa_math" and L > MATH_MAX_SEQLEN:  # 8k would need ~2-8 GB of scores
                continue
            b = peak_memory(impl, L, dtype, direction)
            rows.append({"impl": impl, "seqlen": L, "dtype": dtype, "direction": direction, "peak_extra_bytes": b})
            print(f"peak memory {impl:<13} {direction:<8} {dtype} L={L:<5} "
                  f"{'failed' if b is None else f'{b / 2**20:8.1f} MiB'}", flush=True)
    return rows


# ------------------------------------------------------------------------------ pytest-benchmark

def _pytest_cases():
    return cases(seqlens=(TARGET["seqlen"],), head_dims=(TARGET["head_dim"],))


try:
    import pytest

    @pytest.mark.parametrize("impl", IMPLS, ids=list(IMPLS))
    @pytest.mark.parametrize("case", _pytest_cases(), ids=[c.name.replace(" ", "_") for c in _pytest_cases()])
    def test_cpu_attention(benchmark, case, impl):
        runner = _runner(impl)
        inputs = case.make_inputs(torch.device("cpu"), requires_grad=case.direction != "fwd")
        with runner.context():
            fn = _callable(runner, case, inputs)
            benchmark.extra_info["gflop"] = attention_flops(case.batch, case.heads, case.seqlen, case.seqlen,
                                                            case.head_dim, case.causal, case.direction) / 1e9
            benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
except ImportError:  # pragma: no cover - pytest is only needed for the pytest-benchmark entry
    pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", action="store_true", help="seqlens 512-8192, head dims 64 and 128")
    p.add_argument("--threads", default="", help="comma-separated thread counts (default: torch's)")
    p.add_argument("--seqlens", default="", help="comma-separated (default: 2048; --sweep: 512-8192)")
    p.add_argument("--head-dims", default="", help="comma-separated (default: 128; --sweep: 64,128)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, from {IMPLS}")
    p.add_argument("--directions", default="fwd,fwd+bwd", help="comma-separated: fwd, fwd+bwd")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--mode", choices=("both", "causal", "full"), default="both")
    p.add_argument("--memory", action="store_true", help="peak memory at 2k/4k/8k (subprocesses)")
    p.add_argument("--no-time", action="store_true", help="skip the timings (with --memory)")
    p.add_argument("--memory-impls", default="fastattn:cpu,sdpa_flash,sdpa_math")
    p.add_argument("--json", help="write rows and the environment here")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t] or [None]
    rows, mem = [], []
    if not args.no_time:
        causal = {"both": (True, False), "causal": (True,), "full": (False,)}[args.mode]
        shape = dict(seqlens=(512, 1024, 2048, 4096, 8192), head_dims=(64, 128)) if args.sweep else \
            dict(seqlens=(TARGET["seqlen"],), head_dims=(TARGET["head_dim"],))
        if args.seqlens:
            shape["seqlens"] = tuple(int(x) for x in args.seqlens.split(","))
        if args.head_dims:
            shape["head_dims"] = tuple(int(x) for x in args.head_dims.split(","))
        grid = cases(**shape, dtypes=args.dtypes.split(","), causal=causal, directions=args.directions.split(","))
        rows = run(grid, impl_names=args.impls.split(","), reps=args.reps, threads=threads)
    if args.memory:
        for dtype in ("float32", "bfloat16"):
            for direction in ("fwd", "fwd+bwd"):
                mem += memory_rows(dtype=dtype, direction=direction, impl_names=args.memory_impls.split(","))
    if args.json:
        record = {"environment": environment("cpu"), "command": " ".join([sys.executable] + sys.argv),
                  "load_average": os.getloadavg(), "rows": rows, "memory": mem}
        Path(args.json).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
