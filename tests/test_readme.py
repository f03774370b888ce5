"""The README's commands are the ones the project really runs, and its code examples hold up."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from trainbus.bus._sink import Sink

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO_COMMAND = "bash scripts/setup.sh && .venv/bin/trainbus demo"
TEST_COMMAND = "bash scripts/setup.sh test && .venv/bin/python -m pytest -n 2 -q"


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_the_two_commands_are_in_the_readme() -> None:
    """The demo and test commands appear verbatim as shell blocks of their own."""
    blocks = [block.strip() for block in code_blocks("bash")]
    assert DEMO_COMMAND in blocks
    assert TEST_COMMAND in blocks


def test_the_test_command_is_what_ci_runs() -> None:
    """.ci/run sets up the same profile and runs the same pytest invocation as the README."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    setup, pytest_command = TEST_COMMAND.split(" && ")
    assert setup in ci
    assert pytest_command in ci


def test_python_examples_parse() -> None:
    """Every Python block in the README is valid Python."""
    blocks = code_blocks("python")
    assert blocks
    for block in blocks:
        ast.parse(block)


def test_the_sink_example_defines_a_sink() -> None:
    """The 'Writing a sink' example runs and defines a Sink subclass that wants Log and Evaluate."""
    (block,) = [b for b in code_blocks("python") if "class PrintMetrics(Sink)" in b]
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    cls = namespace["PrintMetrics"]
    assert isinstance(cls, type) and issubclass(cls, Sink)
    assert cls().sink_name == "print-metrics"
