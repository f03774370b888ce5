"""The README's Benchmarks section: each target's verdict, the GPU rows' run, the peers table.

Written from the same result files and rows as ``RESULTS.md`` (``benchmarks._report``), between
the README's markers, and only by a full suite run into the repository (``benchmarks.__main__``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from benchmarks._common import format_table
from benchmarks._report import (
    BESIDE,
    COARSER,
    GPU_ROWS,
    GPU_TOPIC,
    TARGETS,
    machine_words,
    met_text,
    peers_pivot,
    target_rows,
    value_text,
)

__all__ = ["README_END", "README_START", "readme_section", "update_readme"]

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
        elif row["target"] in unjudged and row["met"] == "-" and _beside(row["note"]):
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
            format_table(peers_pivot(table), markdown=True),
            "",
        ]
    lines.append(README_END)
    return "\n".join(lines)


def _beside(note: str) -> bool:
    """Whether a figure without a target belongs in the README next to the target's verdict."""
    return COARSER in note or BESIDE in note.split(";")[0]


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
        f"GPU rows, measured on {where} ({machine_words(machine)}, torch {torch_version}, "
        f"commit {machine.get('commit')}) by `{data.get('command', '?')}` on "
        f"{data.get('date', '?')}{' (quick mode)' if data.get('quick') else ''}: "
        f"{'; '.join(parts)}."
    )


def _gpu_figure(item: Mapping[str, Any], title: str) -> str:
    verdict = f" ({met_text(item).replace('**', '')})" if item.get("met") is not None else ""
    what = str(item.get("name"))[len(title) :].strip(" :,")
    note = f"; {item['note']}" if item.get("note") else ""
    return f"{value_text(item)}{verdict} ({what}{note})"


def _same_machine(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("cpu", "cores", "memory_gib", "gpu")
    return all(a.get(k) == b.get(k) for k in keys)


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
