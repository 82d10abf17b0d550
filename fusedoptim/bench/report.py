"""Tables, summaries, the README's results tables and the PNG chart, from benchmark rows
(Row objects or the dicts of a `--json` file)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, is_dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .implementations import ALGOS

Case = Tuple[str, str, str]  # (layout, algo, dtype)


def _as_dicts(rows: Sequence[object]) -> List[Dict[str, object]]:
    return [asdict(r) if is_dataclass(r) else dict(r) for r in rows]


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _cases(rows: List[Dict[str, object]]) -> Dict[Case, List[Dict[str, object]]]:
    cases: Dict[Case, List[Dict[str, object]]] = {}
    for r in rows:
        cases.setdefault((r["layout"], r["algo"], r["dtype"]), []).append(r)
    return cases


def format_table(rows: Sequence[object]) -> str:
    rows = _as_dicts(rows)
    header = ["layout", "algo", "dtype", "impl", "median ms", "min ms", "GB/s", "% ceil",
              "vs fastest other", "peak+ MB", "max|d|", "paths f/r"]
    lines: List[List[str]] = []
    for r in rows:
        if r.get("error"):
            lines.append([r["layout"], r["algo"], r["dtype"], r["impl"], "ERROR", "", "", "",
                          "", "", "", r["error"][:70]])
            continue
        paths = r.get("step_paths")
        speedup = r.get("speedup_vs_fastest_other")
        lines.append([
            r["layout"], r["algo"], r["dtype"], r["impl"],
            _fmt(r["median_ms"], ".2f"), _fmt(r["min_ms"], ".2f"), _fmt(r["gbps"], ".1f"),
            _fmt(r["pct_ceiling"], ".0f"), _fmt(speedup, ".2f") + ("x" if speedup else ""),
            _fmt(r.get("peak_extra_mb"), ".0f"), _fmt(r.get("max_abs_diff"), ".1e"),
            f"{paths.get('fused', '?')}/{paths.get('reference', '?')}" if paths else "-",
        ])
    widths = [max([len(h)] + [len(l[i]) for l in lines]) for i, h in enumerate(header)]

    def render(cells):
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    prev = None
    for r, l in zip(rows, lines):
        case = (r["layout"], r["algo"], r["dtype"])
        if prev is not None and case != prev:
            out.append("")
        prev = case
        out.append(render(l))
    return "\n".join(out)


def fusedoptim_vs_fastest_other(rows: Sequence[object]
                                ) -> List[Tuple[Case, Dict[str, object], Dict[str, object]]]:
    """Per case: (case, fusedoptim's row, the fastest other implementation's row)."""
    out = []
    for case, rs in _cases(_as_dicts(rows)).items():
        ours = next((r for r in rs if r["impl"] == "fusedoptim" and r.get("median_ms")), None)
        others = [r for r in rs if r["impl"] != "fusedoptim" and r.get("median_ms")]
        if ours is not None and others:
            out.append((case, ours, min(others, key=lambda r: r["median_ms"])))
    return out


def summary_lines(rows: Sequence[object]) -> List[str]:
    return [f"{layout:6s} {algo:8s} {dtype:8s} fusedoptim {ours['median_ms']:8.2f} ms vs "
            f"{best['impl']:14s} {best['median_ms']:8.2f} ms -> "
            f"{best['median_ms'] / ours['median_ms']:.2f}x"
            for (layout, algo, dtype), ours, best in fusedoptim_vs_fastest_other(rows)]


# --------------------------------------------------------------------------------------
# README results tables
# --------------------------------------------------------------------------------------


def command_of(meta: Dict[str, object]) -> str:
    """The command line that produced a JSON file, as a user would type it."""
    argv = [str(a) for a in meta.get("argv") or []]
    if not argv:
        return "?"
    script = argv[0].replace(os.sep, "/")
    if script.endswith("fusedoptim/bench/__main__.py") or script.endswith("fusedoptim/bench"):
        head = "python -m fusedoptim.bench"
    elif "benchmarks/" in script:
        head = "python " + script[script.index("benchmarks/"):]
    else:
        head = "python " + os.path.basename(script)
    return " ".join([head, *argv[1:]])



def markdown_results(doc: Dict[str, object], layouts: Optional[Sequence[str]] = None) -> str:
    """One markdown table per layout of a `--json` document: fusedoptim against the fastest
    other implementation measured in the same run, with where the numbers came from."""
    meta = doc["metadata"]
    rows = doc["rows"]
    machine = meta.get("device_name") or meta.get("cpu_model") or "?"
    if str(meta.get("device", "cpu")) == "cpu" and meta.get("cpu_flags"):
        machine += f" ({' '.join(meta['cpu_flags'])})"
    commit = (meta.get("git_commit") or "?")[:7]
    lines = [f"{machine}, {meta.get('threads', '?')} threads, torch "
             f"{meta.get('torch_version', '?')}, commit `{commit}`, "
             f"{str(meta.get('date', '?'))[:10]}:", "",
             f"```\n{command_of(meta)}\n```"]
    by_layout: Dict[str, list] = {}
    for case, ours, best in fusedoptim_vs_fastest_other(rows):
        by_layout.setdefault(case[0], []).append((case, ours, best))
    for layout, entries in by_layout.items():
        if layouts is not None and layout not in layouts:
            continue
        first = entries[0][1]
        lines += ["", f"`{layout}` ({first['n_tensors']:,} tensors, {first['numel']:,} params):",
                  "",
                  "| algo | dtype | fusedoptim ms | fastest other | its ms | speedup "
                  "| fusedoptim % of ceiling |",
                  "|---|---|---:|---|---:|---:|---:|"]
        for (_, algo, dtype), ours, best in entries:
            lines.append(
                f"| {ALGOS[algo].label if algo in ALGOS else algo} | {dtype} | {ours['median_ms']:.2f} | "
                f"{best['impl']} | {best['median_ms']:.2f} | "
                f"{best['median_ms'] / ours['median_ms']:.2f}x | "
                f"{_fmt(ours.get('pct_ceiling'), '.0f')} |")
    return "\n".join(lines)


_RESULTS_BLOCK = re.compile(
    r"(<!-- results: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render_readme_results(text: str, root: str) -> str:
    """Regenerate every `<!-- results: FILE.json [layout,...] -->` ... `<!-- /results -->`
    block of a markdown text from the JSON file it names (relative to `root`)."""
    def replace(m: re.Match) -> str:
        path, *layouts = m.group("spec").split()
        with open(os.path.join(root, path)) as f:
            doc = json.load(f)
        table = markdown_results(doc, layouts[0].split(",") if layouts else None)
        return m.group(1) + table + "\n" + m.group(4)
    return _RESULTS_BLOCK.sub(replace, text)


# --------------------------------------------------------------------------------------
# PNG chart
# --------------------------------------------------------------------------------------


def plot_png(rows: Sequence[object], path: str, title: str = "") -> None:
    """Grouped bars of median step time (log scale) per case, one colour per
    implementation, one panel per layout. Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from e
    rows = [r for r in _as_dicts(rows) if r.get("median_ms")]
    if not rows:
        raise RuntimeError("--plot: no timed rows to plot")
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(len(layouts), 1, squeeze=False,
                             figsize=(max(6.0, 1.2 * len(_cases(rows)) + 3), 3.6 * len(layouts)))
    width = 0.8 / len(impls)
    for ax, layout in zip(axes[:, 0], layouts):
        cases = [c for c in _cases(rows) if c[0] == layout]
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, case in enumerate(cases):
                r = next((r for r in _cases(rows)[case] if r["impl"] == impl), None)
                if r is not None:
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(r["median_ms"])
            ax.bar(xs, ys, width, label=impl)
        ax.set_yscale("log")
        ax.set_ylabel("step time, ms (log)")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{algo}\n{dtype}" for _, algo, dtype in cases])
        ax.set_title(f"{title} {layout}".strip())
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
