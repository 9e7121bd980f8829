"""``python -m fastattn info``: versions, devices, compiled extensions, backends.

With ``--kernels``: the static fitness report of every GPU kernel
(:mod:`fastattn.buildcheck.kernel_report`). ``--json`` prints the same as JSON (with
``--kernels``: the list of kernel records of :mod:`fastattn.buildcheck.kernel_report`). ``--sass`` (implies
``--kernels``) adds the main-loop machine-code analysis of every kernel and its static
ceilings (:mod:`fastattn.buildcheck.sass_report`), as each record's ``sass``.
"""
from __future__ import annotations

import importlib
import json
import platform
import sys

import torch

from fastattn.cli import environment as env

EXTENSIONS = ("_C", "_cuda", "_cuda_sim")
_EXTENSION_ROLE = {
    "_C": "native CPU kernels (backend 'cpu')",
    "_cuda": "CUDA kernels (backend 'cuda' on GPUs)",
    "_cuda_sim": "CUDA kernels on the host SIMT runtime (backend 'cuda' on CPU tensors)",
}


_CPU_EMULATION = {"triton": "the Triton interpreter", "cuda": "the simulated CUDA build"}


def extension_info(name: str) -> dict:
    """Whether ``fastattn.<name>`` imports, its file, and (for ``_cuda``) the compiled archs."""
    info = {"name": f"fastattn.{name}", "role": _EXTENSION_ROLE[name]}
    try:
        mod = importlib.import_module(f"fastattn.{name}")
    except ImportError as exc:
        info.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
        return info
    info.update(loaded=True, file=getattr(mod, "__file__", None))
    # compiled_arch_names() keeps arch suffixes (90a: Hopper's wgmma/TMA features); compiled_archs() gives ints.
    for attr in ("compiled_arch_names", "compiled_archs", "archs"):
        fn = getattr(mod, attr, None)
        if callable(fn):
            try:
                info["archs"] = [str(a) for a in fn()]
            except Exception as exc:  # noqa: BLE001  (an extension that cannot answer is reported)
                info["archs_error"] = f"{type(exc).__name__}: {exc}"
            break
    for attr in ("simd", "simd_level", "isa", "openmp", "openmp_threads"):
        fn = getattr(mod, attr, None)
        if callable(fn):
            try:
                info[attr] = fn()
            except Exception:  # noqa: BLE001
                pass
    return info


def backend_info() -> dict:
    """Per device type: every backend's availability (``None`` = usable, else why not) and
    the core ops it implements; plus backend packages that failed to import."""
    from fastattn import dispatch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    # A backend whose package failed to import says so in its reason (dispatch.IMPORT_ERRORS).
    availability = {d: dispatch.available_backends(d) for d in devices}
    ops = {b: sorted(op for op in dispatch.OP_SIGNATURES if b in dispatch.implementations(op))
           for b in dispatch.BACKENDS}
    # Ops a backend hands to another backend's kernel, per device: {device: {backend: {op: by}}}.
    delegated = {d: {b: {op: by for op in ops[b] if (by := dispatch.runs_on(op, b, d)) != b}
                     for b in dispatch.BACKENDS} for d in devices}
    return {
        "availability": availability,
        "auto_order": {d: list(dispatch.AUTO_ORDER.get(d, ("reference",))) for d in devices},
        "ops": ops,
        "delegated": {d: {b: ops_ for b, ops_ in per.items() if ops_} for d, per in delegated.items()},
        "import_errors": dict(dispatch.IMPORT_ERRORS),
    }


def collect() -> dict:
    """Everything ``info`` prints, as a JSON-ready dict."""
    import fastattn

    return {
        "fastattn": fastattn.__version__,
        **{f"git_{k}": v for k, v in env.git_commit().items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": env.triton_version(),
        "cuda_runtime_torch": torch.version.cuda,
        "nvcc": env.nvcc_version(),
        "os": platform.platform(),
        "cpu": {"model": env.cpu_model(), "cores": env.cpu_cores(), "torch_threads": torch.get_num_threads()},
        "cuda_devices": env.cuda_devices(),
        "extensions": [extension_info(n) for n in EXTENSIONS],
        "backends": backend_info(),
    }


def format_info(data: dict) -> str:
    """:func:`collect`'s dict as the text ``info`` prints."""
    lines = [
        f"fastattn {data['fastattn']}" + (f" (git {data['git_commit'][:12]}{', modified' if data.get('git_dirty') else ''})"
                                          if data.get("git_commit") else ""),
        f"Python   {data['python']}",
        f"torch    {data['torch']} (CUDA runtime {data['cuda_runtime_torch'] or 'none: CPU build'})",
        f"triton   {data['triton'] or 'not installed'}",
        f"nvcc     {data['nvcc'] or 'not found'}",
        f"OS       {data['os']}",
        "",
        "Devices:",
        f"  cpu: {data['cpu']['model']}, {data['cpu']['cores']} cores, torch uses {data['cpu']['torch_threads']} threads",
    ]
    if not data["cuda_devices"]:
        lines.append("  cuda: none visible")
    for d in data["cuda_devices"]:
        lines.append(f"  cuda:{d['index']}: {d['name']}, sm_{d['capability'].replace('.', '')}, "
                     f"{d['sm_count']} SMs, {d['memory_gib']} GiB" + (f", driver {d['driver']}" if d.get("driver") else ""))
    lines += ["", "Compiled extensions:"]
    for e in data["extensions"]:
        if e["loaded"]:
            extra = f", archs {', '.join(e['archs'])}" if "archs" in e else ""
            extra += f" (archs unknown: {e['archs_error']})" if "archs_error" in e else ""
            lines.append(f"  {e['name']}: loaded{extra}  [{e['role']}]")
        else:
            lines.append(f"  {e['name']}: not available ({e['error']})  [{e['role']}]")
    b = data["backends"]
    lines += ["", "Backends:"]
    for device, avail in b["availability"].items():
        lines.append(f"  on {device} tensors (auto tries {' > '.join(b['auto_order'][device])}):")
        for name, why in avail.items():
            by = b["delegated"].get(device, {}).get(name, {})
            ops = [op if op not in by else f"{op} (delegated: {by[op]}'s kernel runs)" for op in b["ops"].get(name) or []]
            state = "available" if why is None else f"unavailable: {why}"
            if why is None and device == "cpu" and name in _CPU_EMULATION:
                state += f" ({_CPU_EMULATION[name]}: for correctness checks; auto never picks it)"
            lines.append(f"    {name:<10} {state}")
            if why is None or ops:
                lines.append(f"    {'':<10} ops: {', '.join(ops) if ops else 'none registered'}")
    for name, err in b["import_errors"].items():
        lines.append(f"  backend package fastattn.backends.{name} failed to import: {err}")
    return "\n".join(lines)


def run(args) -> int:
    """Entry point of the ``info`` subcommand."""
    sass = getattr(args, "sass", False)
    if args.kernels or sass:
        from fastattn.buildcheck import kernel_report

        report = kernel_report.collect(args.archs, sass=True) if sass else kernel_report.collect(args.archs)
        if args.json:
            # stdout stays a valid JSON list; what could not be reported goes to stderr.
            print(json.dumps(report.records, indent=2, default=str))
            for backend, why in report.missing.items():
                print(f"{backend}: not reported: {why}", file=sys.stderr)
        else:
            print(kernel_report.format_table(report))
            if sass:
                from fastattn.buildcheck import sass_report

                print()
                print(sass_report.format_table(report.records))
        return 1 if report.problems() else 0
    data = collect()
    print(json.dumps(data, indent=2, default=str) if args.json else format_info(data))
    return 0


def add_parser(sub) -> None:
    """Register the ``info`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("info", help="versions, devices, compiled extensions and backends",
                       description="Versions, devices, compiled extensions and their archs, and every backend "
                                   "with why it is unavailable; --kernels for the GPU kernel fitness report.")
    p.add_argument("--kernels", action="store_true",
                   help="the static fitness report of every GPU kernel (registers, shared memory, spills, "
                        "occupancy), compiled for each arch with no GPU; exit status 1 if a kernel spills or "
                        "does not fit")
    p.add_argument("--sass", action="store_true",
                   help="with --kernels (implied): disassemble every kernel and count its main loop(s) per warp and "
                        "iteration (MMA, shared/global/local memory, MUFU, FP/integer ALU, selects, barriers), with "
                        "issue-, shared-memory-, MUFU- and FP32-bound static ceilings (upper bounds, not measured "
                        "speed)")
    p.add_argument("--json", action="store_true", help="print JSON (with --kernels: the list of kernel records)")
    p.add_argument("--archs", type=lambda s: [a for a in s.split(",") if a], default=[80, 90],
                   help="comma-separated archs for --kernels (default 80,90)")
    p.set_defaults(func=run)
