"""Render the suite's JSON (``bench/run.py``) into ``bench/RESULTS.md`` and a latency plot.

Writes Markdown tables (both model sizes, every engine and peer side by side: status,
load and first-call time, resident memory, single-row latency percentiles, rows/s at
every batch size on 1 and 2 threads, ratios to ``lightgbm``, distance from the physical
limit) plus the machine and the exact command, and a PNG of the single-row latency
distribution (CDF on a log axis, one panel per model size).

Only the part of the results page between ``<!-- suite:begin -->`` and
``<!-- suite:end -->`` is rewritten; when the markers are missing they are added (with
the section) at the end of the page's summary section, before its next ``## `` heading.

Run::

    .venv/bin/python bench/report.py bench/results/suite.json
        [--md bench/RESULTS.md] [--png bench/results/latency.png] [--print]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BEGIN = "<!-- suite:begin -->"
END = "<!-- suite:end -->"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORDER = ("lightgbm", "onnx", "numba", "compiled", "hummingbird", "lleaves", "tl2cgen")
BATCH_LABEL = {1: "1", 64: "64", 1024: "1,024", 100_000: "100k", 1_000_000: "1M"}


# ---- formatting ----------------------------------------------------------------------------


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and v == v


def num(v: Any, digits: int = 1) -> str:
    return f"{v:,.{digits}f}" if _ok(v) else "–"


def sig(v: Any) -> str:
    """Three significant digits: 1.23M, 456k, 7.89k, 123."""
    if not _ok(v):
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            x = v / div
            return f"{x:.3g}{suffix}" if x < 100 else f"{x:.0f}{suffix}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def times(v: Any) -> str:
    return f"{v:.2f}×" if _ok(v) else "–"


def pair(a: Any, b: Any, digits: int) -> str:
    if not _ok(a) and not _ok(b):
        return "–"
    return f"{num(a, digits)} / {num(b, digits)}"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def ordered(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    known = [n for n in ORDER if n in results]
    return [(n, results[n]) for n in known + sorted(set(results) - set(known))]


# ---- sections ------------------------------------------------------------------------------


def machine_text(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    cache = ", ".join(
        f"L{c['level']}{'d' if c.get('type') == 'Data' else 'i' if c.get('type') == 'Instruction' else ''} "
        f"{c['size']}"
        + (f" (shared by {c['shared_by_cpus']})" if c.get("shared_by_cpus", 1) > 1 else "")
        for c in m.get("caches", [])
    )
    envs = doc.get("envs", {})
    main_libs = ", ".join(
        f"{k} {v}" for k, v in envs.get("main", {}).get("libs", {}).items() if v != "not installed"
    )
    missing = [k for k, v in envs.get("main", {}).get("libs", {}).items() if v == "not installed"]
    peers = envs.get("peers", {})
    peer_libs = ", ".join(f"{k} {v}" for k, v in sorted(peers.get("libs", {}).items()))
    lines = [
        f"- CPU: `{m.get('cpu', '?')}`, {num(m.get('mhz'), 0)} MHz, {m.get('cores', '?')} cores "
        f"({m.get('affinity', '?')} usable), SIMD {'/'.join(m.get('simd', [])) or '–'}; caches per "
        f"core: {cache or '?'}; {m.get('ram_gib', '?')} GiB RAM; hypervisor {m.get('hypervisor', '?')}, "
        f"Linux {m.get('kernel', '?')}.",
        f"- Main env (`.venv`), Python {envs.get('main', {}).get('python', '?')}: {main_libs}"
        + (f" (not installed: {', '.join(missing)})" if missing else "")
        + ".",
    ]
    if peers.get("python") or peers.get("error"):
        lines.append(
            "- Peers env (`bench/.venvs/peers`, made by `bench/peers_env.py`): "
            + (peer_libs or "–")
            + (f"; {peers['error']}" if peers.get("error") else "")
            + "."
        )
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    if la0 and la1:
        lines.append(
            f"- Load average (1 min) {la0[0]:.2f} at the start, {la1[0]:.2f} at the end; "
            f"run took {num(doc.get('wall_s'), 0)} s."
        )
    return "\n".join(lines)


def method_text(doc: dict[str, Any]) -> str:
    s = doc.get("settings", {})
    mode = (
        "`--quick` (a smoke run: short rounds, figures are rough)" if doc.get("quick") else "full"
    )
    return "\n".join(
        [
            f"Mode: {mode}. {doc.get('passes', '?')} passes over every model × adapter, each adapter "
            "in a fresh process, the order reversed on every other pass; per measure the best "
            "pass is shown (lowest latency, highest rows/s); all passes are in the JSON."
            + (
                " The first pass starts with empty compile caches: load / first call are "
                "given as cold / warm (warm = a later pass, caches filled)."
                if doc.get("cold_first_pass")
                else ""
            ),
            f"Single-row latency: {s.get('calls', '?'):,} calls from Python after 200 warm-up "
            "calls, one thread, each on a different row (~15 % NaN per numeric feature). "
            f"Throughput: best of {s.get('rounds', '?')} rounds of ~{s.get('round_s', '?')} s "
            f"(1M rows: {s.get('big_rounds', '?')} call(s)), consecutive calls on different rows, "
            "separate instance per thread count. Load = constructing the adapter (file read, "
            "compile where the peer compiles at load); first call = the first one-row predict "
            "(JIT / session warm-up; our engines' `warmup()` runs in it). RSS = VmRSS increase "
            "of the process over the load (after the library imports). Parity = max relative "
            f"error vs `Booster.predict` on {s.get('parity_rows', '?'):,} rows incl. NaN / ±inf / "
            "unseen-category edge cases (tolerance 1e-4).",
        ]
    )


def model_heading(model: dict[str, Any]) -> str:
    sh = model.get("shape", {})
    v = model.get("visits_timed", {})
    vp = model.get("visits_parity", {})
    txt = model.get("model_bytes", {}).get("eta.txt")
    return (
        f"### {model.get('trees', '?')} trees × {model.get('leaves', '?')} leaves\n\n"
        f"Model: {sh.get('trees', '?')} trees, {num(sh.get('mean_leaves'))} leaves per tree on "
        f"average, {sh.get('internal_nodes', '?'):,} internal nodes; "
        f"{sh.get('features', '?')} features; text model {num((txt or float('nan')) / 1e6, 2)} MB. "
        f"Node visits per row: {num(v.get('mean'))} (timed rows; {num(vp.get('mean'))} over the "
        f"parity rows), deepest path {v.get('max_tree_depth', '?')}."
    )


def latency_table(model: dict[str, Any]) -> str:
    head = (
        "| engine | status | load s cold / warm | first call ms cold / warm | RSS MB load / incl. 1st call "
        "| p50 µs | p99 µs | p99.9 µs | p50 speed-up vs lightgbm | p50 / limit | parity max rel err |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in ordered(model.get("results", {})):
        status = r.get("status", "?")
        if status != "ok":
            lines.append(f"| {name} | {cell(status)} |" + " – |" * 9)
            continue
        par = r.get("parity") or {}
        ptxt = (
            f"{par['max_rel']:.1e}" + ("" if par.get("ok") else f" ✗ ({par.get('rows_off')} rows)")
            if _ok(par.get("max_rel"))
            else cell(par.get("error", "–"))
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    "ok"
                    if r.get("passes_ok") == r.get("passes")
                    else f"ok ({r.get('passes_ok')}/{r.get('passes')} passes)",
                    pair(r.get("load_s_cold"), r.get("load_s_warm"), 2),
                    pair(r.get("first_call_ms_cold"), r.get("first_call_ms_warm"), 1),
                    pair(r.get("rss_model_mb"), r.get("rss_first_call_mb"), 1),
                    num(r.get("p50_us")),
                    num(r.get("p99_us")),
                    num(r.get("p999_us")),
                    times(r.get("speedup_p50_vs_lightgbm")),
                    times((r.get("distance_from_bound") or {}).get("one_row")),
                    ptxt,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def throughput_table(model: dict[str, Any], doc: dict[str, Any]) -> str:
    s = doc.get("settings", {})
    batches = [int(b) for b in s.get("batches", [1, 64, 1024, 100_000, 1_000_000])]
    threads = [int(t) for t in s.get("threads", [1, 2])]
    big = [b for b in batches if b >= 100_000]
    cols = [f"@{BATCH_LABEL.get(b, f'{b:,}')}" for b in batches]
    cols += [f"@{BATCH_LABEL.get(b, f'{b:,}')} vs lightgbm" for b in big]
    cols += [f"limit / @{BATCH_LABEL.get(b, f'{b:,}')}" for b in big]
    lines = [
        "| engine | threads | " + " | ".join(cols) + " | cores used @largest |",
        "|---|---:|" + "---:|" * (len(cols) + 1),
    ]
    for name, r in ordered(model.get("results", {})):
        if r.get("status") != "ok":
            lines.append(f"| {name} | – | {cell(r.get('status', '?'))} |" + " |" * len(cols))
            continue
        rows, ratio = r.get("rows_per_s", {}), r.get("rows_ratio_vs_lightgbm", {})
        dist, cores = r.get("distance_from_bound", {}), r.get("cores_used", {})
        for t in threads:
            cells = [sig(rows.get(f"{b}@{t}")) for b in batches]
            cells += [times(ratio.get(f"{b}@{t}")) for b in big]
            cells += [times(dist.get(f"{b}@{t}")) for b in big]
            c = cores.get(f"{batches[-1]}@{t}")
            lines.append(f"| {name} | {t} | " + " | ".join(cells) + f" | {num(c, 2)} |")
    return "\n".join(lines)


def notes(model: dict[str, Any]) -> str:
    out = []
    for name, r in ordered(model.get("results", {})):
        if r.get("note"):
            out.append(f"- {name}: {cell(r['note'])}")
        others = [o for o in (r.get("others_cores") or []) if _ok(o)]
        if r.get("status") == "ok" and others and max(others) > 0.5:
            out.append(
                f"- {name}: other processes used up to {max(others):.2f} cores while it ran "
                "(figures from such a pass are low; the best pass is shown)"
            )
    return "\n".join(out)


def limits_section(doc: dict[str, Any]) -> str:
    lim = doc.get("limits") or {}
    if not lim or "visit_throughput_ns" not in lim:
        err = lim.get("error") if lim else "not measured (--no-limits)"
        return f"### Physical limit\n\nNot available: {err}."
    ghz = lim.get("ghz")

    def cyc(ns: Any) -> str:
        return (
            f"{num(ns, 2)} ns ({num(ns * ghz, 1)} cycles)" if _ok(ns) and _ok(ghz) else num(ns, 2)
        )

    chase = lim.get("chase_ns", {})
    text = [
        "### Physical limit",
        "",
        "What any tree engine must do per row is visit `V` internal nodes (the sum over the "
        "trees of the depth of the leaf the row reaches; counted from LightGBM's own "
        "`pred_leaf` and tree dump). Each visit is a *dependent* step (load the node, load "
        "`x[feature]`, compare, pick the child: the next address depends on the compare); "
        "different trees and rows are independent, so an out-of-order core overlaps their "
        "walks. Measured on this CPU by `bench/limits.py` (numba, best of "
        f"{lim.get('reps', '?')} runs):",
        "",
        f"- dependent load (pointer chase over a random cycle): L1 {cyc(chase.get('L1_16KiB'))}, "
        f"L2 {cyc(chase.get('L2_512KiB'))}, DRAM {cyc(chase.get('DRAM_64MiB'))};",
        "- one node visit, branch-free (child = `left + (right - left) * (x[f] > t)`), through a "
        "random graph of 24-byte node records as large as the model: "
        + ", ".join(
            f"{int(k):,} nodes: {cyc(v)} as one dependent chain, "
            f"{cyc(lim.get('visit_throughput_ns', {}).get(k))} per visit with "
            f"{lim.get('chains', '?')} chains interleaved"
            for k, v in lim.get("visit_latency_ns", {}).items()
        )
        + ";",
        f"- calling a trivial compiled function with a `[1, 20]` float32 row from Python: "
        f"{num(lim.get('call_floor_ns'), 0)} ns (numba dispatcher; the floor of any per-row call);",
        f"- memory bandwidth, one core: copy {num(lim.get('copy_gbs'), 1)} GB/s (read + write), "
        f"streaming read {num(lim.get('read_gbs'), 1)} GB/s ({lim.get('bandwidth_array_mib', '?')} MiB arrays).",
        "",
        "Limit per model (the `p50 / limit` and `limit / @…` columns above): one row = call "
        "floor + max(`V` × overlapped cost per visit, deepest path × dependent cost); batches "
        "per core = min(1 / (`V` × overlapped cost), bandwidth / 88 B per row (80 B in, 8 B "
        "out)), times the thread count. Memory bandwidth is two to three orders of magnitude "
        "away: the node visits are the limit. It is an estimate, not a proof: the cost of the "
        "leanest scalar walk over node records measured here (each visit overlapped with "
        "others, nothing mispredicted). Code-generated trees (compiled, lleaves, tl2cgen) "
        "keep thresholds and feature indices in the instruction stream, so their visit is a "
        "compare and a branch (cheaper when predicted, ~15–20 cycles when not) and can come "
        "in under it; `compiled` evaluates the bottom of each tree without branches (every "
        "compare of a small subtree, independent of one another, then selects), which is "
        "not a walk at all and is how it passes the estimate on the 100 × 31 model; SIMD "
        "or bit-vector evaluation (QuickScorer-style) is not modelled either. The "
        "serial estimate (each visit waiting for the previous one) is what a walk without "
        "overlap costs.",
        "",
        "| model | V visits/row | limit 1 row µs | serial estimate µs | best p50 µs (engine) | "
        "distance | limit rows/s/core (compute / membw) | best 1-thread rows/s @1M (engine) | distance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in doc.get("models", []):
        b = model.get("bound") or {}
        ok = [(n, r) for n, r in model.get("results", {}).items() if r.get("status") == "ok"]
        best_lat = min(ok, key=lambda x: x[1].get("p50_us") or float("inf"), default=None)
        keys = [
            k for k in ("1000000@1", "100000@1") if any(k in r.get("rows_per_s", {}) for _, r in ok)
        ]
        key = keys[0] if keys else None
        best_rows = (
            max(ok, key=lambda x: x[1].get("rows_per_s", {}).get(key) or 0.0, default=None)
            if key
            else None
        )
        p50 = best_lat[1].get("p50_us") if best_lat else None
        rps = best_rows[1]["rows_per_s"].get(key) if best_rows and key else None
        text.append(
            "| "
            + " | ".join(
                [
                    f"{model.get('trees')} × {model.get('leaves')}",
                    num(b.get("visits_per_row"), 0),
                    num(b.get("one_row_us"), 2),
                    num(b.get("one_row_serial_us"), 1),
                    f"{num(p50)} ({best_lat[0]})" if best_lat else "–",
                    times(p50 / b["one_row_us"]) if _ok(p50) and b.get("one_row_us") else "–",
                    f"{sig(b.get('rows_per_s_compute'))} / {sig(b.get('rows_per_s_membw'))}",
                    f"{sig(rps)} ({best_rows[0]}{'' if key == '1000000@1' else ', 100k'})"
                    if best_rows
                    else "–",
                    times(b["rows_per_s"] / rps)
                    if _ok(rps) and rps and b.get("rows_per_s")
                    else "–",
                ]
            )
            + " |"
        )
    text.append("")
    text.append(
        "Every engine's own distance is in the tables above (`p50 / limit`, `limit / @…` "
        "with the limit scaled by the thread count; under 1.00× = faster than the estimate)."
    )
    return "\n".join(text)


def render(doc: dict[str, Any], image: str | None = "results/latency.png") -> str:
    """The Markdown section (without the markers)."""
    parts = [
        "## Engine and peer suite (`bench/run.py`)",
        "",
        f"Run {doc.get('started', '?')}; generated by `bench/report.py` from the suite's JSON. "
        "Reproduce:",
        "",
        "```sh",
        doc.get("command") or ".venv/bin/python bench/run.py",
        f".venv/bin/python bench/report.py {doc.get('json_path', 'bench/results/suite.json')}",
        "```",
        "",
        machine_text(doc),
        "",
        method_text(doc),
    ]
    for model in doc.get("models", []):
        parts += [
            "",
            model_heading(model),
            "",
            latency_table(model),
            "",
            "Throughput, rows/s (ratios: same batch and thread count):",
            "",
            throughput_table(model, doc),
        ]
        n = notes(model)
        if n:
            parts += ["", n]
    parts += ["", limits_section(doc)]
    if image:
        parts += ["", f"![single-row latency]({image})"]
    return "\n".join(parts) + "\n"


# ---- the page ------------------------------------------------------------------------------


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``; markers added
    (at the end of the summary section, else after the title) when absent."""
    body = f"{BEGIN}\n{block.strip(chr(10))}\n{END}"
    i = text.find(BEGIN)
    j = text.find(END, i + len(BEGIN)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        return text[:i] + body + text[j + len(END) :]
    lines = text.splitlines(keepends=True)
    at = None
    start = next((k for k, ln in enumerate(lines) if ln.startswith("## Summary")), None)
    if start is not None:
        at = next(
            (k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines)
        )
    else:
        title = next((k for k, ln in enumerate(lines) if ln.startswith("# ")), None)
        if title is not None:
            at = next(
                (k for k in range(title + 1, len(lines)) if lines[k].startswith("## ")),
                len(lines),
            )
    if at is None:
        at = 0
    before = "".join(lines[:at])
    after = "".join(lines[at:])
    sep_before = (
        "" if not before or before.endswith("\n\n") else ("\n" if before.endswith("\n") else "\n\n")
    )
    return before + sep_before + body + "\n" + ("\n" if after else "") + after


def plot(doc: dict[str, Any], png: Path) -> Path:
    """CDF of single-row latency per engine, one panel per model size (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = doc.get("models", [])
    fig, axes = plt.subplots(
        1, max(1, len(models)), figsize=(6.2 * max(1, len(models)), 4.2), squeeze=False
    )
    for ax, model in zip(axes[0], models, strict=False):
        drawn = 0
        for name, r in ordered(model.get("results", {})):
            q = r.get("latency_quantiles") or []
            if r.get("status") != "ok" or not q:
                continue
            ys = [p[0] for p in q if _ok(p[1])]
            xs = [p[1] for p in q if _ok(p[1])]
            (line,) = ax.plot(xs, ys, label=f"{name} (p50 {num(r.get('p50_us'))} µs)", lw=1.6)
            tail = [x for y, x in zip(ys, xs, strict=True) if abs(y - 0.999) < 1e-9]
            if tail:  # this curve's own p99.9
                ax.plot(tail[:1], [0.999], marker="o", ms=3, color=line.get_color())
            drawn += 1
        b = model.get("bound") or {}
        if _ok(b.get("one_row_us")):
            ax.axvline(
                b["one_row_us"], color="grey", ls="--", lw=1, label="estimated limit (1 row)"
            )
        ax.set_xscale("log")
        ax.set_yscale("logit")  # stretches both tails: p1 ... p50 ... p99.9
        ax.set_ylim(0.005, 0.9995)
        ticks = [0.01, 0.1, 0.5, 0.9, 0.99, 0.999]
        ax.set_yticks(ticks, [f"p{t * 100:g}" for t in ticks])
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("single-row predict latency, µs (log)")
        ax.set_ylabel("fraction of calls ≤ x (logit)")
        ax.set_title(f"{model.get('trees')} trees × {model.get('leaves')} leaves")
        ax.grid(True, which="both", alpha=0.3)
        if drawn or _ok(b.get("one_row_us")):
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "Single-row latency from Python: distribution of the calls (dots: p99.9)", fontsize=11
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write(doc: dict[str, Any], md: Path, png: Path) -> str:
    """Plot to ``png``, render, and rewrite the marked part of ``md``; returns the block."""
    plot(doc, png)
    image = os.path.relpath(png, md.parent).replace(os.sep, "/")
    block = render(doc, image)
    old = md.read_text() if md.is_file() else "# Benchmark results\n"
    md.write_text(replace_block(old, block))
    return block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("json", type=Path, nargs="?", default=BENCH / "results" / "suite.json")
    ap.add_argument("--md", type=Path, default=BENCH / "RESULTS.md")
    ap.add_argument("--png", type=Path, default=BENCH / "results" / "latency.png")
    ap.add_argument("--print", action="store_true", help="also print the section")
    args = ap.parse_args(argv)
    doc = json.loads(args.json.read_text())
    try:
        doc.setdefault("json_path", os.path.relpath(args.json.resolve(), BENCH.parent))
    except ValueError:
        doc.setdefault("json_path", str(args.json))
    block = write(doc, args.md, args.png)
    if args.print:
        print(block)
    print(f"wrote {args.md} (suite section) and {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
