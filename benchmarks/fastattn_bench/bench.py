"""``python -m fastattn bench``: microbenchmarks users can cite.

For every case of the preset (:mod:`.cases`) it times every fastattn backend
available on the device and every peer importable in this process
(:mod:`.impls`) on the same inputs in one process (on a CPU in turns, call by
call, so that a change in the machine's load hits every implementation alike), and
reports per row: median time, spread, TFLOP/s or GB/s, % of the device's peak
(:mod:`.peaks`), and the ratio to each peer (peer median / this median: above
1 means faster than that peer). Output: a table; ``--json PATH`` with the full environment
(:mod:`.environment`); ``--markdown`` (ending with how to cite the numbers);
``--plot PATH.png``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from . import cases as cases_mod
from . import impls, measure, output, peaks, schema
from .environment import environment

SCHEMA_VERSION = 1
"""Version of the JSON layout; :mod:`.schema` describes and validates it."""


def _input_sets(case, device, requires_grad):
    first = case.make_inputs(device, requires_grad)
    n = measure.rotation_count(measure.tensor_bytes(*first.values()), device)
    return [first] + [case.make_inputs(device, requires_grad) for _ in range(n - 1)]


def _timed_fn(runner, case, sets):
    """``fn(i)`` running ``case.direction`` of ``runner`` on input set ``i mod len(sets)``."""
    sets = [runner.adapt(case, s) for s in sets]
    keys = impls.GRAD_KEYS[case.family]
    n = len(sets)
    if case.direction == "fwd":
        def fn(i):
            with torch.no_grad():
                return runner.forward(case, sets[i % n])
        return fn
    if case.direction == "bwd":
        outs = [runner.forward(case, s) for s in sets]

        def fn(i):
            s = sets[i % n]
            return torch.autograd.grad(outs[i % n], [s[k] for k in keys], s["dout"], retain_graph=True)
        return fn

    def fn(i):
        s = sets[i % n]
        out = runner.forward(case, s)
        return torch.autograd.grad(out, [s[k] for k in keys], s["dout"])
    return fn


def measure_case(case, runner_list, device, budget_s) -> list[dict]:
    """One row per runner for ``case`` (status ok/skipped/error), ratios filled in.

    Every runner is prepared and called once first (errors and compilation surface there);
    then on a CPU all of them are timed in turns (:func:`measure.time_cpu_interleaved`), on
    a GPU one after the other with the GPU timer."""
    rows, ready = [], []
    sets = None
    for runner in runner_list:
        if case.family not in runner.families:
            continue
        row = {"case": case.name, "family": case.family, "direction": case.direction, "dtype": case.dtype,
               "impl": runner.name, "kind": runner.kind, "shape": case.as_dict(), "metric": case.metric,
               "flops": case.flops(), "bytes": case.nbytes(), "status": "skipped", "reason": None,
               "resolved_backend": None, "ratios": {}}
        rows.append(row)
        why = runner.why_not(case, device)
        if why is not None:
            row["reason"] = why
            continue
        if sets is None:
            sets = _input_sets(case, device, requires_grad=case.direction != "fwd")
        try:
            with runner.context():
                with impls.record_selection(runner):
                    fn = _timed_fn(runner, case, sets)
                    fn(0)  # a first call outside the timer: errors surface here, compilation happens here
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    timing = measure.time_call(fn, device, budget_s=budget_s)
                    _fill(row, timing, runner, case)
                else:
                    ready.append((row, runner, fn))
        except (ValueError, TypeError, NotImplementedError) as exc:
            row["reason"] = _short(exc)  # e.g. a backend that does not take this input
        except Exception as exc:  # noqa: BLE001  (a peer's failure is a row, not a crash)
            row["status"], row["reason"] = "error", _short(exc)
    if ready:
        fns = [_in_context(runner, fn) for _, runner, fn in ready]
        for (row, runner, _), timing in zip(ready, measure.time_cpu_interleaved(fns, budget_s=budget_s)):
            _fill(row, timing, runner, case)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        r["ratios"] = {p["impl"]: p["median_s"] / r["median_s"] for p in ok if p["kind"] == "peer" and p is not r}
    return rows


def _in_context(runner, fn):
    """``fn`` run inside ``runner.context()`` (an SDPA backend selection costs microseconds:
    negligible against the CPU calls it wraps, and needed once calls are interleaved)."""
    def call(i):
        with runner.context():
            return fn(i)
    return call


def _fill(row, timing, runner, case) -> None:
    row.update(status="ok", median_s=timing.median, p20_s=timing.p20, p80_s=timing.p80,
               spread=timing.spread, reps=timing.reps, timer=timing.timer,
               resolved_backend=runner.resolved(case, None) if runner.kind == "fastattn" else None)
    row["tflops"] = row["flops"] / timing.median / 1e12 if row["flops"] else None
    row["gbps"] = row["bytes"] / timing.median / 1e9
    row["value"] = row["tflops"] if case.metric == "TFLOP/s" else row["gbps"]


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:300]


def add_peaks(rows, peak: peaks.Peak) -> None:
    """Fill ``pct_of_peak``: TFLOP/s rows against the dtype's compute peak, GB/s rows against bandwidth."""
    for r in rows:
        if r["status"] != "ok":
            continue
        if r["metric"] == "TFLOP/s":
            top = peak.tflops_for(r["dtype"])
            r["pct_of_peak"] = 100.0 * r["tflops"] / top if top else None
        else:
            r["pct_of_peak"] = 100.0 * r["gbps"] / peak.gbps if peak.gbps else None


def run(args) -> int:
    """Run the benchmark with the options of :func:`build_parser`; returns the exit status."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    preset = "tiny" if args.tiny else ("quick" if args.quick else "full" if args.full else "default")
    case_list = cases_mod.resolve(preset, args.sizes, device.type)
    if args.filter:
        case_list = [c for c in case_list if all(word in c.name for word in args.filter.split())]
    budget = args.budget if args.budget is not None else {"tiny": 0.02, "quick": 0.25, "default": 0.5,
                                                          "full": 1.0}[preset]
    runner_list = impls.runners(device, full=args.full)
    if args.impls:
        wanted = set(args.impls.split(","))
        runner_list = [r for r in runner_list if r.name in wanted]
    env = environment(device)  # before the run: its load average is the one the timings met first
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = []
    for i, case in enumerate(case_list, 1):
        print(f"[{i}/{len(case_list)}] {case.name}", file=sys.stderr, flush=True)
        rows.extend(measure_case(case, runner_list, device, budget))
    dtypes = sorted({cases_mod.DTYPES[r["dtype"]] for r in rows if r["metric"] == "TFLOP/s"}, key=str)
    peak = peaks.device_peak(device, dtypes=tuple(dtypes) or (torch.float32,))
    add_peaks(rows, peak)
    result = {
        "schema_version": SCHEMA_VERSION,
        "tool": "python -m fastattn bench",
        "preset": "sizes" if args.sizes else preset,
        "environment": env,
        "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "peak": peak.as_dict(),
        "conventions": {
            "ratio": "peer median time / this row's median time (> 1: this row is faster)",
            "spread": "(p80 - p20) / median of the per-call times",
            "flops": "attention: 4*B*H*Lq*Lk*D forward, causal halved, backward 2.5x forward (flash-attn's count)",
            "bytes": "kvcache: K and V caches read + q read + out written; activation: gate+up read, out written",
        },
        "elapsed_s": round(time.perf_counter() - start, 2),
        "rows": rows,
    }
    for problem in schema.validate(result):  # a bug here, not in the user's run: say so, still write
        print(f"bench: the result departs from its schema: {problem}", file=sys.stderr)
    print(output.text_table(result))
    if args.markdown:
        print()
        print(output.markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        output.plot(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def build_parser():
    """The parser of ``python -m fastattn bench``'s options."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m fastattn bench",
        description="Time every fastattn backend available on the device against every peer importable here "
                    "(torch SDPA by backend, flash-attn, xformers, FlexAttention, Liger-Kernel) on the same "
                    "inputs; print a table, optionally JSON, markdown, and a plot.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few representative cases (under a minute on a CPU)")
    size.add_argument("--full", action="store_true", help="every case: head dims 64/128/256, seqlens to 16k (GPU)")
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: millisecond-sized cases
    p.add_argument("--sizes", help=argparse.SUPPRESS)  # explicit cases, see cases.parse_sizes
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)  # seconds of timed calls per row
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible, else cpu")
    p.add_argument("--filter", help="only cases whose name contains every given word, e.g. 'attn causal'")
    p.add_argument("--impls", help="comma-separated implementations to time, e.g. fastattn:auto,sdpa_flash")
    p.add_argument("--json", metavar="PATH", help="write every measurement and the environment as JSON")
    p.add_argument("--markdown", action="store_true", help="also print markdown tables and how to cite them")
    p.add_argument("--plot", metavar="PATH.png", help="plot throughput vs size per implementation (matplotlib)")
    return p


def main(argv) -> int:
    """``python -m fastattn bench ARGV...``: parse ``argv`` (the words after ``bench``) and run."""
    return run(build_parser().parse_args(argv))
