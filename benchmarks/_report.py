"""Turn result files into ``RESULTS.md``, the console summary and ``results.png``.

Everything here reads ``results/<topic>.json`` only: no figure is computed from anything but a
measurement a benchmark wrote down, and a target nobody measured says so instead of guessing.

The targets table keeps one row per figure with a short note (the first clause of the note its
benchmark wrote); the full notes stay with each topic's section, so the table stays scannable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks._common import format_table

__all__ = [
    "GPU_ROWS",
    "GPU_TOPIC",
    "TARGETS",
    "machine_words",
    "met_text",
    "peers_pivot",
    "render_markdown",
    "render_plot",
    "short_note",
    "target_rows",
    "targets_table",
    "value_text",
]

MAX_TABLE_ROWS: Final = 80


@dataclass(frozen=True)
class Target:
    """A promise the project makes and the words its headline figures are recognised by."""

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
    Target("journal on disk per 1,000,000 steps, compressed", "<= 100 MB", ("compressed",)),
    Target("trainbus show over a 1,000,000-step journal", "<= 10 s", ("trainbus show",)),
    Target(
        "collectives per optimizer step besides DDP's (2 ranks)",
        "<= 1",
        ("collectives per optimizer step",),
    ),
)
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


def value_text(item: Mapping[str, Any]) -> str:
    value = item.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    text = format_table([{"v": value}], ["v"]).splitlines()[-1].strip()
    return f"{text} {item.get('unit', '')}".strip()


def met_text(item: Mapping[str, Any]) -> str:
    met = item.get("met")
    if met is None:
        return "-" if item.get("value") is not None else "not measured"
    return "**met**" if met else "**not met**"


OTHER: Final = "other figures"
"""The group of headline figures that answer no project target (they may carry their own)."""


def short_note(note: str) -> str:
    """The first clause of a benchmark's note: what qualifies the figure, in a few words."""
    return note.split(";")[0].strip()


def target_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per headline figure, grouped by the project target it answers (each target has
    at least one row, "not measured" when no benchmark reported it), then the other figures.

    The GPU topic's figures come last, under the GPU rows' titles: they were measured on another
    machine, so they never stand in for a CPU target.
    """
    heads = [h for h in _headlines(results) if h["topic"] != GPU_TOPIC]
    gpu_heads = [h for h in _headlines(results) if h["topic"] == GPU_TOPIC]
    used: set[int] = set()
    rows: list[dict[str, str]] = []
    for target in TARGETS:
        title = f"{target.title} {target.target}"
        found = [
            (i, h)
            for i, h in enumerate(heads)
            if any(word in str(h.get("name", "")).lower() for word in target.keywords)
        ]
        if not found:
            rows.append(_unmeasured(title, "no benchmark reported it"))
        for index, item in found:
            used.add(index)
            rows.append(_row(title, str(item.get("name", "")), item))
    for index, item in enumerate(heads):
        if index not in used:
            rows.append(_row(OTHER, str(item.get("name", "")), item))
    for title in GPU_ROWS:
        measured = [h for h in gpu_heads if str(h.get("name", "")).startswith(title)]
        rows += [_row(title, str(h["name"])[len(title) :].strip(" :,"), h) for h in measured]
        if not measured:
            rows.append(_unmeasured(title, "no GPU on the benchmark machine; never estimated"))
    return rows


def _unmeasured(title: str, why: str) -> dict[str, str]:
    return {
        "target": title,
        "figure": "-",
        "measured": "not measured",
        "met": "not measured",
        "source": "-",
        "note": why,
    }


def _row(title: str, figure: str, item: Mapping[str, Any]) -> dict[str, str]:
    note = short_note(str(item.get("note", "")))
    own_target = str(item.get("target") or "").strip()
    if title == OTHER and own_target not in ("", "-"):
        note = f"its target {own_target}" + (f"; {note}" if note else "")
    return {
        "target": title,
        "figure": figure or "-",
        "measured": value_text(item),
        "met": met_text(item),
        "source": str(item["topic"]) + (" (quick)" if item.get("quick") else ""),
        "note": note or "-",
    }


def _grouped(rows: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The rows with each target named on its first row only, so the groups stand out."""
    out: list[dict[str, str]] = []
    previous = None
    for row in rows:
        out.append({**row, "target": "" if row["target"] == previous else row["target"]})
        previous = row["target"]
    return out


def targets_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The console version of the targets table."""
    rows = _grouped(target_rows(results))
    plain = [{k: v.replace("**", "") for k, v in row.items() if k != "note"} for row in rows]
    return format_table(plain)


def peers_pivot(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
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
            f"Machine: {machine_words(machine)}, torch "
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
    lines += _notes(data)
    tables = data.get("tables") or {}
    if topic == "peers" and tables.get("peers"):
        lines += [
            "Training steps per second as a ratio to the hand-written loop measured in the same "
            "condition (median over alternating rounds; 1.0 = as fast as the floor; "
            "`sc` = extra scalars per log entry; route: MLflow direct or behind the latency "
            "proxy). Empty cells: a contender that does not talk to MLflow runs only direct.",
            "",
            format_table(peers_pivot(tables["peers"]), markdown=True),
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


def _notes(data: Mapping[str, Any]) -> list[str]:
    """The full notes of the topic's headline figures whose note says more than its first clause
    (the targets table shows only that clause)."""
    items = [h for h in data.get("headline") or [] if isinstance(h, Mapping)]
    noted = [
        h for h in items if str(h.get("note", "")).strip() != short_note(str(h.get("note", "")))
    ]
    if not noted:
        return []
    return [
        "Notes on the headline figures:",
        "",
        *(f"- {h.get('name')}: {value_text(h)}; {str(h['note']).strip()}." for h in noted),
        "",
    ]


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
        "Each figure with the first clause of its benchmark's note; the full notes are in the "
        "topic's section below.",
        "",
        format_table(_grouped(target_rows(results)), markdown=True),
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


def machine_words(machine: Mapping[str, Any]) -> str:
    return (
        f"{machine.get('gpu')}, {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"Python {machine.get('python')}"
    )
