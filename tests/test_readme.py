"""The README tells users the truth: its commands, examples and figures hold up.

Only what a user relies on is checked (commands, flags, imports, figures), never the prose.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path
from types import ModuleType

import tomllib

from trainbus import Sink
from trainbus.orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO_COMMAND = "bash scripts/setup.sh && .venv/bin/trainbus demo"
TEST_COMMAND = "bash scripts/setup.sh test && .venv/bin/python -m pytest -n 2 -q"


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def table_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table under the README's ``heading``, as lists of cells."""
    lines = README.split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def test_the_two_commands_come_first() -> None:
    """The demo and test commands are the README's first two shell blocks, verbatim."""
    blocks = [block.strip() for block in code_blocks("bash")]
    assert blocks[:2] == [DEMO_COMMAND, TEST_COMMAND]


def test_the_test_command_is_what_ci_runs() -> None:
    """.ci/run sets up the same profile and runs the same pytest invocation as the README."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    setup, pytest_command = TEST_COMMAND.split(" && ")
    assert setup in ci
    assert pytest_command in ci


def test_setup_installs_what_the_commands_run() -> None:
    """setup.sh knows the ``test`` profile, defaults to the demo's, and the package installs the
    ``trainbus`` command the demo command calls."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'profile="${1:-demo}"' in setup
    assert re.search(r"^\s*test\)", setup, flags=re.MULTILINE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["trainbus"] == "trainbus.orchestrator.cli:main"


def _importable(module: ModuleType, name: str) -> bool:
    """Whether ``from module import name`` works: an attribute, or a submodule of a package."""
    if hasattr(module, name):
        return True
    try:
        importlib.import_module(f"{module.__name__}.{name}")
    except ModuleNotFoundError:
        return False
    return True


def test_python_examples_compile_and_import_what_they_name() -> None:
    """Every Python block compiles, and every name it imports exists."""
    blocks = code_blocks("python")
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        compile(tree, "README.md", "exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not _importable(module, a.name)]
                assert not missing, f"from {node.module} import {missing}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def test_the_sink_example_defines_a_sink() -> None:
    """The 'Writing your own sink' example runs and defines a Sink subclass named as shown."""
    (block,) = [b for b in code_blocks("python") if "class PrintMetrics(Sink)" in b]
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    cls = namespace["PrintMetrics"]
    assert isinstance(cls, type) and issubclass(cls, Sink)
    assert cls().sink_name == "print-metrics"


def test_the_command_table_names_real_commands_and_flags() -> None:
    """Every command and flag in the README's command table is one ``trainbus`` accepts."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    rows = table_rows("## Command line")
    assert {row[0].split()[1] for row in rows} == set(commands.choices)
    for row in rows:
        usage = row[0].strip("`")
        options = commands.choices[usage.split()[1]]._option_string_actions
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", usage):
            assert flag in options, f"{usage}: trainbus does not accept {flag}"


def test_the_results_table_copies_measured_figures() -> None:
    """Every figure in the README's results table is one benchmarks/RESULTS.md reports, and it
    is marked "not met" exactly when RESULTS.md says so."""
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
    rows = table_rows("## Results")
    assert rows
    for row in rows:
        measured = row[2].removesuffix(" (not met)")
        lines = [line for line in results if f"| {measured} |" in line]
        assert lines, f"{row[0]}: {measured} is not in RESULTS.md"
        missed = row[2].endswith("(not met)")
        assert any(("**not met**" in line) == missed for line in lines), row
    assert "(benchmarks/RESULTS.md)" in README
