"""Turn result files into ``RESULTS.md``, the console summary and ``results.png``.

Everything here reads ``results/<topic>.json`` only: no figure is computed from anything but a
measurement a benchmark wrote down, and a target nobody measured says so instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks._common import format_table

__all__ = [
    "TARGETS",
    "readme_section",
    "render_markdown",
    "render_plot",
    "targets_table",
    "update_readme",
]

MAX_TABLE_ROWS: Final = 80


@dataclass(frozen=True)
class Target:
    """A promise from the README and the words its headline figure is recognised by."""

    title: str
    target: str
    keywords: tuple[str, ...]


TARGETS: Final = (
    Target(
        "slow sink (+200 ms/request): steps/s vs no sink",
        ">= 0.97",
        ("slow-sink", "+200 ms, relative"),
    ),
    Target("publish cost per event", "<= 2 us", ("publish",)),
    Target("host event-loop lag p99 while training (embedded)", "<= 10 ms", ("lag",)),
    Target(
        "MLflow delivery vs the server's own ingest rate", ">= 0.9", ("ingest", "bare log-batch")
    ),
    Target("memory with a dead sink after 1,000,000 events", "<= 32 MB", ("dead", "rss")),
    Target(
        "trainbus Trainer vs hand-written loop (time/step)",
        "<= 1.03",
        ("hand-written", "hand loop"),
    ),
)
COARSER: Final = "target is taken in"
"""Words in the note of a figure that answers a target's question by a coarser method than the
benchmark the target is taken in (``bench_peers``' short runs): the README lists it beside the
verdict, marked "no target", so a contrary figure stays in sight."""
GPU_TOPIC: Final = "gpu"
"""The topic measured on a CUDA machine (``bench_gpu``), which the suite's own machine may lack."""
GPU_ROWS: Final = (
    "trainbus Trainer vs hand-written loop on a CUDA GPU",
    "publish cost per event with a CUDA training thread",
)


def _headlines(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for topic, data in results.items():
        for item in data.get("headline") or []:
            if isinstance(item, Mapping):
                rows.append({"topic": topic, "quick": bool(data.get("quick")), **item})
    return rows


def _value(item: Mapping[str, Any]) -> str:
    value = item.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    text = format_table([{"v": value}], ["v"]).splitlines()[-1].strip()
    return f"{text} {item.get('unit', '')}".strip()


def _met(item: Mapping[str, Any]) -> str:
    met = item.get("met")
    if met is None:
        return "-" if item.get("value") is not None else "not measured"
    return "**met**" if met else "**not met**"


def target_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per README target (measured or not), then every other headline figure.

    The GPU topic's figures come last, under the GPU rows' titles: they were measured on another
    machine, so they never stand in for a CPU target.
    """
    heads = [h for h in _headlines(results) if h["topic"] != GPU_TOPIC]
    gpu_heads = [h for h in _headlines(results) if h["topic"] == GPU_TOPIC]
    used: set[int] = set()
    rows: list[dict[str, str]] = []
    for target in TARGETS:
        found = [
            (i, h)
            for i, h in enumerate(heads)
            if any(word in str(h.get("name", "")).lower() for word in target.keywords)
        ]
        if not found:
            rows.append(
                {
                    "target": f"{target.title} {target.target}",
                    "measured": "not measured",
                    "met": "not measured",
                    "source": "-",
                    "note": "no benchmark reported it",
                }
            )
            continue
        for index, item in found:
            used.add(index)
            rows.append(_row(f"{target.title} {target.target}", item))
    for index, item in enumerate(heads):
        if index not in used:
            rows.append(_row(str(item.get("name")), item))
    for title in GPU_ROWS:
        measured = [h for h in gpu_heads if str(h.get("name", "")).startswith(title)]
        rows += [_row(title, item) for item in measured]
        if measured:
            continue
        rows.append(
            {
                "target": title,
                "measured": "not measured",
                "met": "not measured",
                "source": "-",
                "note": "no GPU on the benchmark machine; never estimated",
            }
        )
    return rows


def _row(title: str, item: Mapping[str, Any]) -> dict[str, str]:
    source = str(item["topic"]) + (" (quick)" if item.get("quick") else "")
    note = "; ".join(x for x in (str(item.get("name", "")), str(item.get("note", ""))) if x)
    if item.get("target"):
        note = f"{note}; its target {item['target']}"
    return {
        "target": title,
        "measured": _value(item),
        "met": _met(item),
        "source": source,
        "note": note,
    }


def targets_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The console version of the targets table."""
    rows = target_rows(results)
    plain = [{k: v.replace("**", "") for k, v in row.items() if k != "note"} for row in rows]
    return format_table(plain)


def _peers_pivot(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Contender by condition, cells ``ratio`` to the floor: the peers table a reader scans."""
    conditions: list[str] = []
    cells: dict[str, dict[str, Any]] = {}
    for row in table:
        condition = f"every {row['every']}, {row['scalars']} sc, {row['route']}"
        if condition not in conditions:
            conditions.append(condition)
        line = cells.setdefault(str(row["contender"]), {"contender": row["contender"]})
        ratio = row.get("ratio")
        line[condition] = ratio if ratio is not None else math.nan
    return list(cells.values())


def _section(topic: str, data: Mapping[str, Any]) -> list[str]:
    lines = [f"## {topic}", ""]
    lines.append(
        f"`{data.get('command', '?')}` on {data.get('date', '?')}"
        + (" (quick mode)" if data.get("quick") else "")
    )
    lines.append("")
    if topic == GPU_TOPIC:
        machine = data.get("machine") or {}
        lines += [
            f"Machine: {_machine_words(machine)}, torch "
            f"{(data.get('versions') or {}).get('torch')}, commit {machine.get('commit')}.",
            "",
        ]
    if data.get("workload"):
        lines += [f"Workload: {data['workload']}.", ""]
    plan = data.get("plan")
    if isinstance(plan, Mapping) and "repeats" in plan:
        runs = (
            tables.get("runs") if isinstance(tables := data.get("tables"), Mapping) else None
        ) or []
        cut = sorted(
            {
                f"every {r['every']}, {r['scalars']} sc, {r['route']}"
                for r in runs
                if r.get("rounds_cut")
            }
        )
        lines += [
            f"Method: {plan['repeats']} alternating rounds per condition; each run times "
            f"{plan['budget_s']} s of training steps after a warm-up of "
            f"{plan['warmup_steps']} steps or {plan.get('warmup_s', '?')} s, whichever ends first."
            + (f" One round only (soft time limit reached): {'; '.join(cut)}." if cut else ""),
            "",
        ]
    tables = data.get("tables") or {}
    if topic == "peers" and tables.get("peers"):
        lines += [
            "Training steps per second as a ratio to the hand-written loop measured in the same "
            "condition (median over alternating rounds; 1.0 = as fast as the floor; "
            "`sc` = extra scalars per log entry; route: MLflow direct or behind the latency "
            "proxy). Empty cells: a contender that does not talk to MLflow runs only direct.",
            "",
            format_table(_peers_pivot(tables["peers"]), markdown=True),
            "",
            "Detail (steps/s, overhead per step over the floor, teardown = flush and close "
            "after the last step):",
            "",
        ]
    for name, rows in tables.items():
        if name == "runs" or not rows:
            continue
        shown = list(rows)[:MAX_TABLE_ROWS]
        columns = [c for c in shown[0] if any(r.get(c) is not None for r in shown)]
        lines += [f"**{name}**", "", format_table(shown, columns, markdown=True), ""]
        if len(rows) > MAX_TABLE_ROWS:
            lines += [f"({len(rows) - MAX_TABLE_ROWS} more rows in results/{topic}.json)", ""]
    if not tables:
        figures = {k: v for k, v in data.items() if isinstance(v, (int, float))}
        if figures:
            lines += [format_table([figures], markdown=True), ""]
    return lines


def render_markdown(
    results: Mapping[str, Mapping[str, Any]], context: Mapping[str, Any], plot: Path | None
) -> str:
    """The whole ``RESULTS.md``."""
    machine = context["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{context['command']}` on {context['date']} "
        f"({context['mode']} mode, {context['elapsed_s']:.0f} s). Every figure below was "
        "measured in that run or, for a topic not run this time, in the run its section names."
        + (
            f" Re-assembled from the result files on {context['reassembled']}."
            if context.get("reassembled")
            else ""
        ),
        "",
        "## Machine",
        "",
        format_table(
            [
                {"what": "CPU", "value": machine.get("cpu")},
                {"what": "cores", "value": machine.get("cores")},
                {"what": "memory", "value": f"{machine.get('memory_gib')} GiB"},
                {"what": "OS", "value": machine.get("os")},
                {"what": "Python", "value": machine.get("python")},
                {"what": "GPU", "value": machine.get("gpu")},
                {"what": "commit", "value": machine.get("commit")},
            ],
            markdown=True,
        ),
        "",
        format_table(
            [
                {"package": k, "version": v or "not installed"}
                for k, v in context["versions"].items()
            ],
            markdown=True,
        ),
        "",
        "## Targets",
        "",
        format_table(target_rows(results), markdown=True),
        "",
    ]
    if plot is not None:
        lines += [f"![steps per second relative to a hand-written loop]({plot.name})", ""]
    lines += ["## Runs", ""]
    lines.append(
        format_table(
            [
                {"benchmark": o["topic"], "status": o["status"], "seconds": o["elapsed_s"]}
                for o in context["outcomes"]
            ],
            markdown=True,
        )
    )
    lines.append("")
    for topic, data in results.items():
        lines += _section(topic, data)
    return "\n".join(lines).rstrip() + "\n"


def render_plot(results: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """Draw ``results.png`` from the peers table; ``False`` when there is nothing to draw."""
    table = ((results.get("peers") or {}).get("tables") or {}).get("peers") or []
    rows = [r for r in table if r.get("ratio") is not None and not math.isnan(r["ratio"])]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    direct = [r for r in rows if r["route"] == "direct"]
    conditions = list(dict.fromkeys((r["every"], r["scalars"]) for r in direct))
    names = list(dict.fromkeys(r["contender"] for r in direct))
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(conditions))
    for k, (every, scalars) in enumerate(conditions):
        values = [
            next(
                (
                    r["ratio"]
                    for r in direct
                    if (r["contender"], r["every"], r["scalars"]) == (n, every, scalars)
                ),
                math.nan,
            )
            for n in names
        ]
        xs = [i + (k - (len(conditions) - 1) / 2) * width for i in range(len(names))]
        left.bar(xs, values, width, label=f"log every {every}, {scalars} scalars")
    left.axhline(0.97, color="black", linestyle="--", linewidth=1, label="0.97 (targets)")
    left.set_xticks(range(len(names)))
    left.set_xticklabels(names, rotation=35, ha="right")
    left.set_yscale("log")
    left.set_ylabel("training steps/s ÷ hand-written loop (log scale)")
    left.set_title("MLflow direct (local server)")
    left.legend(fontsize=8)

    swept: dict[tuple[int, int], set[str]] = {}
    for r in rows:
        swept.setdefault((r["every"], r["scalars"]), set()).add(r["route"])
    every, scalars = max(swept, key=lambda c: (len(swept[c]), -c[0], c[1]))
    routes = list(
        dict.fromkeys(r["route"] for r in rows if (r["every"], r["scalars"]) == (every, scalars))
    )
    mlflow_names = [n for n in names if "mlflow" in n or "+3" in n or n == "trainbus"]
    for name in mlflow_names:
        ys = [
            next(
                (
                    r["ratio"]
                    for r in rows
                    if (r["contender"], r["route"], r["every"], r["scalars"])
                    == (name, route, every, scalars)
                ),
                math.nan,
            )
            for route in routes
        ]
        style = {"linestyle": ":", "color": "grey"} if name == "trainbus" else {}
        right.plot(routes, ys, marker="o", label=f"{name} (no sink)" if style else name, **style)
    right.axhline(0.97, color="black", linestyle="--", linewidth=1)
    right.set_yscale("log")
    right.set_xlabel("MLflow route (latency added per request)")
    right.set_title(f"latency sweep: log every {every}, {scalars} scalars")
    if mlflow_names and len(routes) > 1:
        right.legend(fontsize=8)
    fig.suptitle("Training throughput relative to a hand-written torch loop (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


README_START: Final = "<!-- benchmarks:start (written by python -m benchmarks) -->"
README_END: Final = "<!-- benchmarks:end -->"


def readme_section(results: Mapping[str, Mapping[str, Any]], context: Mapping[str, Any]) -> str:
    """The README's benchmark summary: targets met or not, the plot, the headline comparison."""
    rows = target_rows(results)
    titles = [f"{t.title} {t.target}" for t in TARGETS]
    verdicts: dict[str, list[dict[str, str]]] = {title: [] for title in titles}
    unjudged: dict[str, list[dict[str, str]]] = {title: [] for title in titles}
    for row in rows:
        if row["target"] in verdicts and row["met"] in ("**met**", "**not met**"):
            verdicts[row["target"]].append(row)
        elif row["target"] in unjudged and row["met"] == "-" and COARSER in row["note"]:
            unjudged[row["target"]].append(row)
    summary: list[dict[str, str]] = []
    met, missed, unmeasured = [], [], []
    for title in titles:
        found = verdicts[title]
        kinds = {r["met"] for r in found}
        if not found:
            verdict = "not measured"
            unmeasured.append(title)
        elif kinds == {"**met**"}:
            verdict = "**met**"
            met.append(title)
        elif kinds == {"**not met**"}:
            verdict = "**not met**"
            missed.append(title)
        else:
            verdict = "**partly met**"
            missed.append(title + " (partly)")
        figures = "; ".join(
            [f"{r['measured']} ({r['source']}: {r['note'].split(';')[0]})" for r in found]
            + [
                f"{r['measured']} ({r['source']}, no target: {r['note'].split(';')[0]})"
                for r in unjudged[title]
            ]
        )
        summary.append({"target": title, "verdict": verdict, "measured": figures or "-"})
    machine = context["machine"]
    lines = [
        README_START,
        ("Measured by " if "--only" not in context["command"] else "Last updated by ")
        + f"`{context['command']}` on {context['date']} ({context['mode']} mode) on "
        f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gib')} GiB, "
        f"Python {machine.get('python')}, torch {context['versions'].get('torch')}. "
        + (
            "Topics not in that run keep their last figures; RESULTS.md names the run of each. "
            if "--only" in context["command"]
            else ""
        )
        + "Full tables, versions and method: [benchmarks/RESULTS.md](benchmarks/RESULTS.md) and "
        "[benchmarks/README.md](benchmarks/README.md). Reproduce with "
        "`bash benchmarks/setup.sh && benchmarks/.env/bin/python -m benchmarks`.",
        "",
        format_table(summary, markdown=True),
        "",
        "Met: " + ("; ".join(met) if met else "none") + ".",
        "",
        "Not met: " + ("; ".join(missed) if missed else "none") + ".",
        "",
        "Not measured: "
        + ("; ".join(unmeasured) if unmeasured else "none")
        + ". "
        + _gpu_sentence(results, machine),
        "",
        "![steps per second relative to a hand-written loop](benchmarks/results.png)",
        "",
    ]
    table = ((results.get("peers") or {}).get("tables") or {}).get("peers") or []
    if table:
        lines += [
            "Training steps/s relative to a hand-written torch loop in the same run "
            "(1.0 = as fast; `sc` = extra scalars per log entry):",
            "",
            format_table(_peers_pivot(table), markdown=True),
            "",
        ]
    lines.append(README_END)
    return "\n".join(lines)


def _gpu_sentence(
    results: Mapping[str, Mapping[str, Any]], suite_machine: Mapping[str, Any]
) -> str:
    """Where the GPU rows come from (their machine, run, torch and commit), every figure with
    the note that qualifies it (the paired median beside a best-of ratio); or nowhere yet."""
    data = results.get(GPU_TOPIC)
    if not data:
        return "GPU rows: not measured (no GPU on the benchmark machine; never estimated)."
    heads = [h for h in data.get("headline") or [] if isinstance(h, Mapping)]
    parts = []
    for title in GPU_ROWS:
        mine = [h for h in heads if str(h.get("name", "")).startswith(title)]
        details = ", ".join(_gpu_figure(h, title) for h in mine)
        parts.append(f"{title}: {details or 'not measured'}")
    machine = data.get("machine") or {}
    where = "this machine" if _same_machine(machine, suite_machine) else "another machine"
    torch_version = (data.get("versions") or {}).get("torch")
    return (
        f"GPU rows, measured on {where} ({_machine_words(machine)}, torch {torch_version}, "
        f"commit {machine.get('commit')}) by `{data.get('command', '?')}` on "
        f"{data.get('date', '?')}{' (quick mode)' if data.get('quick') else ''}: "
        f"{'; '.join(parts)}."
    )


def _gpu_figure(item: Mapping[str, Any], title: str) -> str:
    verdict = f" ({_met(item).replace('**', '')})" if item.get("met") is not None else ""
    what = str(item.get("name"))[len(title) :].strip(" :,")
    note = f"; {item['note']}" if item.get("note") else ""
    return f"{_value(item)}{verdict} ({what}{note})"


def _same_machine(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("cpu", "cores", "memory_gib", "gpu")
    return all(a.get(k) == b.get(k) for k in keys)


def _machine_words(machine: Mapping[str, Any]) -> str:
    return (
        f"{machine.get('gpu')}, {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"Python {machine.get('python')}"
    )


def update_readme(readme: Path, section: str) -> bool:
    """Replace the text between the README's benchmark markers; ``False`` when they are absent."""
    if not readme.exists():
        return False
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start] + section + text[end + len(README_END) :])
    return True
