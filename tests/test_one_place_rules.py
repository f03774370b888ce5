"""Rules written once: atomic replaces, secret names and boolean spellings each live in one module.

A source scan of the four packages, so a second copy fails here with the place to use instead.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bus.test_secrets import PLAIN_NAMES, SECRET_NAMES
from trainbus.bus._secrets import MASK, is_secret, redact, redact_url
from trainbus.sinks import redact as public_redact
from trainbus.sinks import redact_url as public_redact_url
from trainbus.trainer._arguments import TrainingArguments

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bus", "trainer", "sinks", "orchestrator")
FILES_RULE = "bus/_files.py"
SECRETS_RULE = "bus/_secrets.py"
ENV_RULE = "bus/_env.py"
_MARKER = r"(?:api[_-]?key|token|secret|passw(?:or)?d|credential|auth)"
_MARKER_WORDS = frozenset(
    {"token", "key", "api_key", "apikey", "secret", "password", "passwd", "credential", "auth"}
)
_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            yield name, ast.parse(path.read_text(encoding="utf-8"), filename=name)


# Directories are renamed into place, not files replaced: a checkpoint's staging directory
# becomes ``checkpoint-N`` (and a previous one is moved aside first).
_DIRECTORY_RENAMES = frozenset({"trainer/_checkpoint.py"})


def os_replace_calls(tree: ast.Module) -> list[int]:
    """Lines that call ``os.replace``/``os.rename``, or ``Path.replace``/``rename`` (one argument).

    ``str.replace`` always takes two arguments, so a one-argument call is a path's.
    """
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("replace", "rename"):
            continue
        on_os = isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
        if on_os or (len(node.args) == 1 and not node.keywords):
            found.append(node.lineno)
    return found


def os_imports_of_replace(tree: ast.Module) -> list[int]:
    """Lines that import ``replace`` or ``rename`` from ``os`` (calls that would hide the name)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module == "os"
        and any(alias.name in ("replace", "rename") for alias in node.names)
    ]


def secret_marker_lists(tree: ast.Module) -> list[int]:
    """Lines holding a list of secret words or a regular expression alternating them."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            words = [
                e.value.lower()
                for e in node.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
            if len(_MARKER_WORDS.intersection(words)) >= 2:
                found.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.search(rf"{_MARKER}\w*\|\s*\w|\w\|{_MARKER}", node.value, re.IGNORECASE)
        ):
            found.append(node.lineno)
    return found


def boolean_spelling_lists(tree: ast.Module) -> list[int]:
    """Lines holding a collection of boolean spellings (``("1", "true", "yes", "on")``)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple | ast.List | ast.Set)
        and len(
            _BOOLEAN_WORDS.intersection(
                e.value.lower()
                for e in node.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            )
        )
        >= 2
    ]


def _offences(check: str, rule_home: str) -> list[str]:
    finder = {
        "replace": lambda tree: os_replace_calls(tree) + os_imports_of_replace(tree),
        "secrets": secret_marker_lists,
        "booleans": boolean_spelling_lists,
    }[check]
    allowed = {rule_home} | (_DIRECTORY_RENAMES if check == "replace" else set())
    return [
        f"{name}:{line}"
        for name, tree in _sources()
        if name not in allowed
        for line in finder(tree)
    ]


def test_files_are_replaced_only_through_the_helper() -> None:
    """No module but the helper calls ``os.replace``: each would need its own crash handling."""
    offences = _offences("replace", FILES_RULE)
    assert not offences, (
        f"os.replace/os.rename outside {FILES_RULE} at {offences}; "
        "call trainbus.bus._files.replace_file instead"
    )


def test_secret_words_are_listed_only_in_the_secret_rule() -> None:
    """No module but the secret rule lists secret-name words; others call ``is_secret``."""
    offences = _offences("secrets", SECRETS_RULE)
    assert not offences, (
        f"a list of secret-name words outside {SECRETS_RULE} at {offences}; "
        "use trainbus.bus._secrets.is_secret / redact / redact_url instead"
    )


def test_boolean_spellings_are_listed_only_in_the_environment_reader() -> None:
    """No module but the environment reader spells out true/false values."""
    offences = _offences("booleans", ENV_RULE)
    assert not offences, (
        f"boolean spellings outside {ENV_RULE} at {offences}; "
        "use trainbus.bus._env.env_flag instead"
    )


@pytest.mark.parametrize(
    ("source", "scan"),
    [
        ("os.replace(tmp, path)", os_replace_calls),
        ("tmp.replace(path)", os_replace_calls),
        ("Path(tmp).rename(path)", os_replace_calls),
        ("from os import replace", os_imports_of_replace),
        ('_SECRET_MARKERS = ("token", "key", "password", "secret")', secret_marker_lists),
        ('PATTERN = r"(api[_-]?key|token|secret)"', secret_marker_lists),
        ('if value in ("1", "true", "yes", "on"): pass', boolean_spelling_lists),
    ],
)
def test_the_scan_finds_a_second_copy(source: str, scan: Callable[[ast.Module], list[int]]) -> None:
    """Each scan recognises the copies it exists to keep out (so the guards above can fail)."""
    assert scan(ast.parse(source)) == [1]


def test_the_scan_leaves_string_replacement_alone() -> None:
    """``text.replace(old, new)`` is a string's, not a file's: two arguments."""
    assert os_replace_calls(ast.parse('name.replace("-", "_")')) == []


@pytest.mark.parametrize("name", SECRET_NAMES + PLAIN_NAMES)
def test_arguments_and_sinks_agree_on_a_name(name: str) -> None:
    """A training-argument field and a key in a sink's data are secret by the same rule."""
    if name in {field.name for field in dataclasses.fields(TrainingArguments)}:
        args = TrainingArguments(hub_token="value")
    else:
        extended = dataclasses.make_dataclass(
            "Extended", [(name, "str | None", None)], bases=(TrainingArguments,)
        )
        args = extended(**{name: "value"})
    assert (args.to_dict()[name] == f"<{name.upper()}>") is is_secret(name)
    assert (redact({name: "value"})[name] == MASK) is is_secret(name)


def test_the_public_names_in_sinks_are_the_one_rule() -> None:
    """``trainbus.sinks.redact``/``redact_url`` are the bus's functions, not a second copy."""
    assert public_redact is redact
    assert public_redact_url is redact_url
