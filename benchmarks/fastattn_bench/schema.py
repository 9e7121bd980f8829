"""The schema of ``python -m fastattn bench --json`` output, and a validator for it.

Written as plain data (a subset of JSON Schema's ideas: required keys and their types)
so that checking a result needs no extra dependency: :func:`validate` returns the list
of problems, empty when the document conforms.
"""
from __future__ import annotations

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))

TOP = {
    "schema_version": int, "tool": str, "preset": str, "environment": dict, "peak": dict,
    "conventions": dict, "elapsed_s": NUM, "rows": list,
}

ENVIRONMENT = {
    "timestamp_utc": str, "command": str, "device_type": str, "device_name": OPT_STR, "sm_count": (int, type(None)),
    "clocks": (dict, type(None)), "driver": OPT_STR, "cuda_runtime": OPT_STR, "nvcc": OPT_STR, "torch": str,
    "triton": OPT_STR, "fastattn": str, "git_commit": OPT_STR, "git_dirty": (bool, type(None)), "python": str,
    "os": str, "cpu_model": str, "cpu_cores": int, "torch_threads": int, "load_average": (list, type(None)),
    "gpus": list,
}

PEAK = {"device": str, "tflops": dict, "gbps": OPT_NUM, "source": str}

ROW = {
    "case": str, "family": str, "direction": str, "dtype": str, "impl": str, "kind": str, "status": str,
    "reason": OPT_STR, "resolved_backend": OPT_STR, "shape": dict, "metric": str, "flops": NUM, "bytes": NUM,
    "ratios": dict,
}

ROW_OK = {
    "median_s": NUM, "p20_s": NUM, "p80_s": NUM, "spread": NUM, "reps": int, "timer": str,
    "tflops": OPT_NUM, "gbps": NUM, "value": NUM, "pct_of_peak": OPT_NUM,
}

FAMILIES = ("attention", "kvcache", "activation", "feed_forward")
STATUSES = ("ok", "skipped", "error")


def _check(obj: dict, spec: dict, where: str, problems: list) -> None:
    for key, types in spec.items():
        if key not in obj:
            problems.append(f"{where}: missing {key!r}")
        elif isinstance(obj[key], bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            problems.append(f"{where}.{key}: a bool where {types} is expected")
        elif not isinstance(obj[key], types):
            problems.append(f"{where}.{key}: {type(obj[key]).__name__} is not {types}")


def validate(result: dict) -> list[str]:
    """Every way ``result`` departs from the schema (empty list: it conforms)."""
    problems: list[str] = []
    if not isinstance(result, dict):
        return ["the document is not an object"]
    _check(result, TOP, "$", problems)
    if problems:
        return problems
    _check(result["environment"], ENVIRONMENT, "$.environment", problems)
    _check(result["peak"], PEAK, "$.peak", problems)
    for i, row in enumerate(result["rows"]):
        where = f"$.rows[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{where}: not an object")
            continue
        _check(row, ROW, where, problems)
        if row.get("family") not in FAMILIES:
            problems.append(f"{where}.family: {row.get('family')!r} not in {FAMILIES}")
        if row.get("status") not in STATUSES:
            problems.append(f"{where}.status: {row.get('status')!r} not in {STATUSES}")
        if row.get("metric") not in ("TFLOP/s", "GB/s"):
            problems.append(f"{where}.metric: {row.get('metric')!r}")
        if row.get("status") == "ok":
            _check(row, ROW_OK, where, problems)
            if isinstance(row.get("median_s"), NUM) and not row["median_s"] > 0:
                problems.append(f"{where}.median_s: not positive")
            for peer, ratio in row.get("ratios", {}).items():
                if not isinstance(ratio, NUM) or not ratio > 0:
                    problems.append(f"{where}.ratios[{peer!r}]: {ratio!r} is not a positive number")
        elif not row.get("reason"):
            problems.append(f"{where}: status {row.get('status')!r} without a reason")
    return problems
