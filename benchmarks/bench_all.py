"""Run the hot-path, contention and end-to-end benchmarks; write tables and charts (issue 11).

Drives ``benchmarks/checkout.py`` (single-thread hot path + contention) and
``benchmarks/e2e/run.py`` (gunicorn + wrk) as subprocesses with a rich progress bar per
step, then:

- replaces the section between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` at the
  end of ``docs/benchmarks.md`` with the commands, the date and the result tables;
- draws PNG charts with matplotlib (Agg) into ``docs/img/``: e2e req/s with min-max error
  bars, e2e latency percentiles, and hot-path µs per cycle as a multiple of the
  lock + deque floor.

``make bench`` installs what this needs and runs it; ``--quick`` is a short run of everything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
E2E_LABELS = {
    "dbpool": "flask-dbpool",
    "psycopg_pool": "psycopg_pool",
    "flask_sqlalchemy": "Flask-SQLAlchemy",
    "fsa_dbpool": "Flask-SQLAlchemy on flask-dbpool",
    "connect": "connect per request",
}
E2E_VARIANTS = list(E2E_LABELS)
#: Contention cells of checkout.py: 4 pools x 2 thread counts x 2 hold times.
CONTENTION_CELLS = 16


@dataclass
class Step:
    name: str
    argv: list[str]
    total: int
    #: a line of output that marks one unit of progress
    tick: re.Pattern[str]
    output: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def shown(argv: list[str]) -> str:
    """The command as someone would type it from the repository root."""
    parts = [os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in argv]
    return shlex.join(parts)


def run_step(step: Step, progress: Progress, console: Console) -> None:
    task = progress.add_task(step.name, total=step.total or None)
    started = dt.datetime.now()
    lines: list[str] = []
    with subprocess.Popen(
        step.argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if step.tick.search(line):
                progress.advance(task)
    step.output = "".join(lines)
    step.seconds = (dt.datetime.now() - started).total_seconds()
    if proc.returncode:
        console.print(step.output[-4000:], markup=False, highlight=False)
        sys.exit(f"{step.name} failed (exit {proc.returncode}): {shown(step.argv)}")
    progress.update(task, total=1 if not step.total else step.total, completed=step.total or 1)


# ---------------------------------------------------------------- parsing checkout.py output


def md_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text`` as rows of cells (header first, separator dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def section(text: str, title: str) -> str:
    """The part of checkout.py's output from the ``## `` heading starting with ``title``."""
    start = text.find(title)
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@dataclass
class HotRow:
    pool: str
    cycle: str
    median_us: float
    min_us: float
    max_us: float


def hot_rows(output: str) -> list[HotRow]:
    tables = md_tables(section(output, "## (a)"))
    if not tables:
        return []
    rows = []
    for cells in tables[0][1:]:
        lo, hi = cells[3].split("-")
        rows.append(HotRow(cells[0], cells[1].strip("`"), float(cells[2]), float(lo), float(hi)))
    return rows


# ---------------------------------------------------------------- charts


def chart_e2e_rps(runs: list[dict[str, Any]], variants: list[str], path: Path, title: str) -> None:
    labels, med, lo, hi = [], [], [], []
    for v in variants:
        rps = [r["rps"] for r in runs if r["variant"] == v]
        if not rps:
            continue
        m = statistics.median(rps)
        labels.append(E2E_LABELS.get(v, v))
        med.append(m)
        lo.append(m - min(rps))
        hi.append(max(rps) - m)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    colors = ["#2a7ab9" if lab == "flask-dbpool" else "#9aa5b1" for lab in labels]
    bars = ax.bar(labels, med, yerr=[lo, hi], capsize=6, color=colors, edgecolor="black")
    for bar, m in zip(bars, med, strict=True):
        ax.annotate(
            f"{m:,.0f}",
            (bar.get_x() + bar.get_width() / 2, 0),
            ha="center",
            va="bottom",
            xytext=(0, 6),
            textcoords="offset points",
            fontsize=10,
            color="white",
            fontweight="bold",
        )
    ax.set_ylabel("req/s: median, error bar = min-max")
    ax.set_title(f"End to end: req/s per variant\n{title}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_e2e_latency(
    runs: list[dict[str, Any]], variants: list[str], path: Path, title: str
) -> None:
    keys = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
    present = [v for v in variants if any(r["variant"] == v for r in runs)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    width = 0.8 / len(keys)
    for i, (key, name) in enumerate(keys):
        values = [
            statistics.median([r[key] for r in runs if r["variant"] == v]) / 1e3 for v in present
        ]
        xs = [j + (i - 1) * width for j in range(len(present))]
        bars = ax.bar(xs, values, width, label=name, edgecolor="black")
        for bar, val in zip(bars, values, strict=True):
            ax.annotate(
                f"{val:.1f}",
                (bar.get_x() + bar.get_width() / 2, val),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 1),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(present)), [E2E_LABELS.get(v, v) for v in present])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    lowest = min(r[k] for r in runs for k, _ in keys if r["variant"] in present) / 1e3
    ax.set_ylim(bottom=10 ** math.floor(math.log10(lowest)) if lowest > 0 else None)
    ax.set_ylabel("latency, ms (median over rounds, log scale)")
    ax.set_title(f"End to end: latency percentiles per variant\n{title}", fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_hot_path(rows: list[HotRow], path: Path, title: str) -> None:
    floor = rows[0].median_us
    rest = [r for r in rows[1:] if not r.pool.startswith("(info)")]
    labels = [f"{r.pool}\n{r.cycle}" for r in rest]
    ratios = [r.median_us / floor for r in rest]
    lo = [(r.median_us - r.min_us) / floor for r in rest]
    hi = [(r.max_us - r.median_us) / floor for r in rest]
    fig, ax = plt.subplots(figsize=(10, 0.62 * len(rest) + 1.6), dpi=120)
    ys = list(range(len(rest)))[::-1]
    colors = ["#2a7ab9" if r.pool.startswith("flask-dbpool") else "#9aa5b1" for r in rest]
    ax.barh(
        ys,
        ratios,
        xerr=[lo, hi],
        capsize=3,
        color=colors,
        edgecolor="black",
        error_kw={"alpha": 0.5},
    )
    for y, ratio, r in zip(ys, ratios, rest, strict=True):
        ax.annotate(
            f"{ratio:.1f}x  ({r.median_us:.2f} µs)",
            (ratio, y),
            va="center",
            xytext=(4, 6),
            textcoords="offset points",
            fontsize=8,
        )
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(ys, labels, fontsize=7.5)
    ax.set_xlabel(
        "µs per checkout + checkin as a multiple of the floor\n"
        f"(threading.Lock + deque = {floor:.3f} µs, dashed line); bar = median, whisker = min-max",
        fontsize=8,
    )
    ax.set_title(f"Hot path: one checkout + checkin, single thread\n{title}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_xlim(0, max(r + h for r, h in zip(ratios, hi, strict=True)) * 1.1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- docs section


def header_lines(output: str) -> list[str]:
    """checkout.py's ``- key: value`` header (python, platform, packages, database)."""
    keep = ("- python:", "- platform:", "- packages:", "- flask-dbpool source:", "- database:")
    return [line for line in output.splitlines() if line.startswith(keep)]


def write_section(doc: Path, body: str) -> None:
    text = doc.read_text()
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    start = text.find(BEGIN)
    if start >= 0:
        end = text.find(END, start)
        end = len(text) if end < 0 else end + len(END)
        text = text[:start].rstrip("\n") + "\n\n" + block + text[end:].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run of everything (checkout --quick; e2e 2 rounds of 3 s)",
    )
    parser.add_argument("--skip-e2e", action="store_true", help="no gunicorn + wrk step")
    parser.add_argument("--skip-contention", action="store_true", help="checkout.py part (a) only")
    parser.add_argument("--url", help="checkout.py database URL (its default if not given)")
    parser.add_argument("--duration", type=float, help="checkout.py: seconds per contention cell")
    parser.add_argument("--repeats", type=int, help="checkout.py: runs per contention cell")
    parser.add_argument("--reps", type=int, help="checkout.py: timed loops per single-thread row")
    parser.add_argument(
        "--loop-seconds", type=float, help="checkout.py: length of one single-thread timed loop"
    )
    parser.add_argument("--rounds", type=int, help="e2e rounds (5; quick 2)")
    parser.add_argument("--seconds", type=int, help="e2e wrk seconds per run (10; quick 3)")
    parser.add_argument(
        "--worker-class",
        choices=("sync", "gthread", "gevent"),
        help="e2e gunicorn worker class (gthread)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="e2e: do not pin gunicorn to CPU 0 and wrk to CPU 1"
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)

    py = sys.executable
    co = [py, str(ROOT / "benchmarks" / "checkout.py")]
    if args.quick:
        co.append("--quick")
    for opt in ("url", "duration", "repeats", "reps", "loop_seconds"):
        value = getattr(args, opt)
        if value is not None:
            co += [f"--{opt.replace('_', '-')}", str(value)]

    steps = [
        Step("hot path (checkout.py part a)", [*co, "--skip-contention"], 1, re.compile(r"(?!)")),
    ]
    if not args.skip_contention:
        steps.append(
            Step(
                "contention (checkout.py part b)",
                [*co, "--skip-single-thread"],
                CONTENTION_CELLS,
                re.compile(r"^\s*(done|skipped)\b"),
            )
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench_all_"))
    e2e_json = tmp / "e2e.json"
    if not args.skip_e2e:
        rounds = args.rounds or (2 if args.quick else 5)
        seconds = args.seconds or (3 if args.quick else 10)
        e2e = [
            py,
            str(ROOT / "benchmarks" / "e2e" / "run.py"),
            "--rounds",
            str(rounds),
            "--seconds",
            str(seconds),
        ]
        if args.worker_class:
            e2e += ["--worker-class", args.worker_class]
        if not args.no_pin and (os.cpu_count() or 1) >= 2:
            e2e.append("--pin")
        steps.append(
            Step(
                "end to end (e2e/run.py, gunicorn + wrk)",
                [*e2e, "--json", str(e2e_json)],
                rounds * len(E2E_VARIANTS),
                re.compile(r"^round \d+ "),
            )
        )

    console = Console(soft_wrap=True)
    started = dt.datetime.now(dt.timezone.utc)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        overall = progress.add_task("all benchmarks", total=len(steps) + 1)
        for step in steps:
            run_step(step, progress, console)
            progress.advance(overall)

        charts: list[Path] = []
        args.img_dir.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y-%m-%d %H:%M UTC") + (" (quick run)" if args.quick else "")
        hot = hot_rows(steps[0].output)
        if hot:
            path = args.img_dir / "bench_hot_path.png"
            chart_hot_path(hot, path, stamp)
            charts.append(path)
        runs: list[dict[str, Any]] = []
        e2e_out = ""
        if not args.skip_e2e:
            runs = json.loads(e2e_json.read_text())
            shutil.rmtree(tmp, ignore_errors=True)
            e2e_out = steps[-1].output
            first = e2e_out.splitlines()[0] if e2e_out else ""
            for name, fn in (
                ("bench_e2e_rps.png", chart_e2e_rps),
                ("bench_e2e_latency.png", chart_e2e_latency),
            ):
                path = args.img_dir / name
                fn(runs, E2E_VARIANTS, path, f"{first}\n{stamp}")
                charts.append(path)
        progress.advance(overall)

    # ---- the docs section
    rel_img = os.path.relpath(args.img_dir, args.doc.parent)
    this = [py, "benchmarks/bench_all.py", *(argv if argv is not None else sys.argv[1:])]
    body = [
        "## Latest `make bench` run (generated)",
        "",
        f"Written by `benchmarks/bench_all.py`; replaced on each run. Date: {stamp}.",
        "",
        "Commands:",
        "",
        "```sh",
        shown(this),
        *(f"{shown(s.argv).replace(str(tmp), '$TMP')}   # {s.seconds:.0f} s" for s in steps),
        "```",
        "",
        *header_lines(steps[0].output),
        "",
    ]
    if hot:
        body += [
            "### Hot path: one checkout + checkin, single thread",
            "",
            *section(steps[0].output, "## (a)").splitlines()[2:],
            "",
            f"![hot path, multiple of the floor]({rel_img}/bench_hot_path.png)",
            "",
        ]
    if not args.skip_contention:
        cont = section(steps[1].output, "## (b)").splitlines()
        body += [
            "### Contention: pool of 4, no overflow",
            "",
            *[line for line in cont[1:] if not line.lstrip().startswith("done:")],
            "",
        ]
    if runs:
        lines = e2e_out.splitlines()
        table_at = next((i for i, line in enumerate(lines) if line.startswith("| variant")), 0)
        body += [
            "### End to end: gunicorn + wrk",
            "",
            lines[0],
            "",
            *lines[table_at:],
            "",
            f"![e2e req/s]({rel_img}/bench_e2e_rps.png)",
            "",
            f"![e2e latency percentiles]({rel_img}/bench_e2e_latency.png)",
            "",
        ]
    text = "\n".join(body)
    text = re.sub(r"\n{3,}", "\n\n", text)
    write_section(args.doc, text)

    console.print(
        f"[green]wrote[/] {os.path.relpath(args.doc, Path.cwd())} "
        f"(section between {BEGIN} and {END})"
    )
    for path in charts:
        console.print(f"[green]wrote[/] {os.path.relpath(path, Path.cwd())}")
    if hot:
        floor = hot[0].median_us
        for r in hot[1:]:
            if r.pool.startswith("flask-dbpool"):
                console.print(
                    f"  {r.pool} `{r.cycle}`: {r.median_us:.3f} µs "
                    f"= {r.median_us / floor:.1f}x floor"
                )
    for v in E2E_VARIANTS:
        rps = [r["rps"] for r in runs if r["variant"] == v]
        if rps:
            console.print(
                f"  e2e {E2E_LABELS[v]}: {statistics.median(rps):,.0f} req/s "
                f"[{min(rps):,.0f}-{max(rps):,.0f}]"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
