"""Rendering of ``fastattn bench`` results: text table, markdown (with how to cite), plot."""
from __future__ import annotations

from collections import OrderedDict

from fastattn.text_table import render_table

FAMILY_TITLES = OrderedDict([
    ("attention", "Attention"),
    ("kvcache", "KV-cache decoding"),
    ("activation", "Fused gated activation"),
    ("feed_forward", "Feed-forward (gated MLP)"),
])


def _groups(rows):
    out = OrderedDict()
    for family in FAMILY_TITLES:
        fam = [r for r in rows if r["family"] == family and r["status"] == "ok"]
        if fam:
            out[family] = fam
    return out


def _peers(rows):
    seen = []
    for r in rows:
        if r["kind"] == "peer" and r["impl"] not in seen:
            seen.append(r["impl"])
    return seen


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _table_rows(rows):
    peers = _peers(rows)
    metric = rows[0]["metric"]
    header = ["case", "impl", "median ms", "spread", metric, "% peak"] + [f"vs {p}" for p in peers]
    body = []
    for r in rows:
        impl = r["impl"]
        resolved = r.get("resolved_backend")
        # What auto picked, or which other backend's kernel ran a direction the named one delegates.
        if resolved and (impl.endswith(":auto") or resolved != impl.split(":", 1)[-1]):
            impl += f" ({resolved})"
        body.append([r["case"], impl, _fmt(r["median_s"] * 1e3, ".3f"), f"{100 * r['spread']:.1f}%",
                     _fmt(r["value"], ".3f" if metric == "TFLOP/s" else ".1f"), _fmt(r.get("pct_of_peak"), ".1f")]
                    + [_fmt(r["ratios"].get(p), ".2f") + ("x" if p in r["ratios"] else "") for p in peers])
    return header, body


def _not_timed(rows):
    """(impl, status, reason) once each, for rows that were skipped or failed."""
    seen = OrderedDict()
    for r in rows:
        if r["status"] != "ok":
            seen.setdefault((r["impl"], r["status"], r["reason"]), 0)
            seen[(r["impl"], r["status"], r["reason"])] += 1
    return [(impl, status, reason, n) for (impl, status, reason), n in seen.items()]


def _env_line(result) -> str:
    env = result["environment"]
    commit = (env.get("git_commit") or "unknown")[:12] + (" (modified)" if env.get("git_dirty") else "")
    return (f"{env['device_name']} | torch {env['torch']} | triton {env['triton']} | fastattn {env['fastattn']} "
            f"(git {commit}) | CUDA {env['cuda_runtime'] or '-'} | {env['os']}")


def _peak_line(result) -> str:
    p = result["peak"]
    flops = ", ".join(f"{k} {v:g}" for k, v in p["tflops"].items() if k != "fp32_simt")
    return f"peak: {flops} TFLOP/s; {p['gbps']:g} GB/s ({p['source']})"


def text_table(result) -> str:
    """The plain-text report: environment, peak, one table per family, what was not timed."""
    rows = result["rows"]
    lines = [_env_line(result), _peak_line(result), "ratio = peer median / this median (> 1: faster than the peer)"]
    for family, fam in _groups(rows).items():
        header, body = _table_rows(fam)
        lines += ["", FAMILY_TITLES[family], render_table(header, body)]
    skipped = _not_timed(rows)
    if skipped:
        lines += ["", "Not timed:"]
        lines += [f"  {impl}: {status}: {reason} ({n} case{'s' if n > 1 else ''})" for impl, status, reason, n in skipped]
    return "\n".join(lines)


def _md_table(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def markdown(result) -> str:
    """Markdown tables per family, the environment, and a closing "how to cite" block."""
    env = result["environment"]
    rows = result["rows"]
    parts = [f"### fastattn bench ({result['preset']}) on {env['device_name']}", "", _env_line(result), "",
             _peak_line(result), "", "Ratio = peer median time / this row's median time (> 1: this row is faster). "
             "Spread = (p80 - p20) / median."]
    for family, fam in _groups(rows).items():
        header, body = _table_rows(fam)
        parts += ["", f"#### {FAMILY_TITLES[family]}", "", _md_table(header, body)]
    skipped = _not_timed(rows)
    if skipped:
        parts += ["", "Not timed: " + "; ".join(f"{impl} ({reason})" for impl, _, reason, _ in skipped) + "."]
    parts += ["", cite_block(result)]
    return "\n".join(parts)


def cite_block(result) -> str:
    """The closing "how to cite these numbers" block of the markdown output."""
    env = result["environment"]
    return "\n".join([
        "#### How to cite these numbers",
        "",
        "Quote the median and its spread with the device, the versions and the commit below; compare",
        "implementations through the ratios, which were measured in the same process on the same inputs",
        "(on a CPU timed in turns, call by call, so that a change in load hits every implementation alike).",
        "Re-run the exact command to reproduce; the JSON output (`--json`) holds every measurement and the",
        "full environment record. On a shared machine, quote the load average with the numbers.",
        "",
        "```",
        f"command:  {env['command']}",
        f"device:   {env['device_name']}" + (f" ({env['sm_count']} SMs)" if env.get("sm_count") else "")
        + (f", driver {env['driver']}" if env.get("driver") else ""),
        f"versions: fastattn {env['fastattn']} (git {env.get('git_commit') or 'unknown'}"
        + (", modified tree" if env.get("git_dirty") else "") + f"), torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda_runtime'] or '-'}",
        f"host:     {env['cpu_model']} ({env['cpu_cores']} cores), {env['os']}, Python {env['python']}",
        f"date:     {env['timestamp_utc']}"
        + (f", load average {' / '.join(f'{x:.1f}' for x in env['load_average'])} (1/5/15 min)"
           if env.get("load_average") else ""),
        "```",
    ])


def _series_key(r) -> tuple:
    s = r["shape"]
    if r["family"] == "attention":
        gqa = f" {s['heads']}/{s['heads_k']}kv" if s["heads"] != s["heads_k"] else ""
        return ("attention", f"{r['direction']} d{s['head_dim']} {'causal' if s['causal'] else 'full'} {r['dtype']}{gqa}",
                "seqlen")
    if r["family"] == "kvcache":
        return ("kvcache", f"decode b{s['batch']} d{s['head_dim']} {r['dtype']}", "cache length")
    if r["family"] == "activation":
        return ("activation", f"{s['activation']} {r['direction']} {r['dtype']}", "elements")
    return ("feed_forward", f"ffn {r['direction']} {r['dtype']}", "tokens")


def plot(result, path: str, max_panels: int = 12) -> None:
    """Throughput vs size (seqlen, cache length, ...) per implementation, one panel per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = OrderedDict()
    for r in result["rows"]:
        if r["status"] != "ok" or r["value"] is None:
            continue
        panels.setdefault(_series_key(r), []).append(r)
    keys = list(panels)[:max_panels] or [("none", "no measurements", "")]
    colors = {}  # one colour per implementation across every panel
    for r in result["rows"]:
        colors.setdefault(r["impl"], f"C{len(colors) % 10}")
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        rows = panels.get(key, [])
        by_impl = OrderedDict()
        for r in rows:
            by_impl.setdefault(r["impl"], []).append(r)
        xs = sorted({_x(r) for r in rows})
        if len(xs) == 1:  # one size only (e.g. --quick): bars per implementation
            names = list(by_impl)
            ax.bar(range(len(names)), [max(r["value"] for r in by_impl[n]) for n in names],
                   color=[colors[n] for n in names])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{key[1]} ({key[2]} {xs[0]})", fontsize=9)
        else:
            for impl, rs in by_impl.items():
                pts = sorted((_x(r), r["value"]) for r in rs)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, color=colors[impl])
            ax.set_title(key[1], fontsize=9)
            ax.set_xlabel(key[2])
            if len(xs) > 2:
                ax.set_xscale("log", base=2)
            ax.legend(fontsize=7)
        ax.set_ylabel(rows[0]["metric"] if rows else "")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    env = result["environment"]
    fig.suptitle(f"fastattn bench: {env['device_name']}, torch {env['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _x(r):
    s = r["shape"]
    return {"attention": lambda: s["seqlen"], "kvcache": lambda: s["cache_len"],
            "activation": lambda: s["tokens"] * s["hidden"], "feed_forward": lambda: s["tokens"]}[r["family"]]()
