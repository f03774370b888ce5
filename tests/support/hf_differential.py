"""Run one transformers training script twice: on ``transformers.Trainer``, then on ours.

A script under ``tests/support/hf_scripts/`` is a plain transformers script: it imports
``Trainer`` and ``TrainingArguments`` (and, when it uses them, ``TrainerCallback`` and friends)
from ``transformers`` on one line marked ``# trainer-import``. ``run_script`` executes the
script's text as is for the transformers run, and with that one line's module replaced by
``trainbus`` for ours: exactly the one-line change a user makes. Everything else (models,
tokenizers, collators) comes from transformers in both runs.

The script leaves what it wants compared in a dict named ``RESULT``; ``run_script`` returns it
together with the files the run wrote. Both runs start from the same seeds. Tokenizers are built
locally from a small vocabulary (``tiny_vocab``): no download happens. A script imports the tiny
model and rows most scripts share from its sibling ``_tiny_data.py``, as a user's script imports
a module next to it.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch

__all__ = ["SCRIPTS", "WORDS", "Flavour", "relative_files", "run_script", "tiny_vocab"]

SCRIPTS: Final = Path(__file__).parent / "hf_scripts"
"""Where the differential scripts live."""

Flavour = Literal["transformers", "trainbus"]

_MARKED_IMPORT: Final = re.compile(r"^from transformers import (.*)# trainer-import$", re.M)

WORDS: Final = tuple(
    [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "ran",
        "on",
        "under",
        "mat",
        "rug",
        "good",
        "bad",
        "film",
        "plot",
        "was",
        "is",
        "very",
        "not",
        "great",
        "dull",
        "story",
        "actor",
        "scene",
        "long",
        "short",
        "happy",
        "sad",
        "and",
        "but",
        "it",
        "this",
        "that",
        "movie",
    ]
)
"""The corpus's words; every one is in the vocabulary, so nothing tokenizes to [UNK]."""


def tiny_vocab(directory: Path) -> Path:
    """A WordPiece ``vocab.txt``, specials then words, for ``BertTokenizerFast(vocab=...)``
    (transformers 5 silently ignores ``vocab_file=`` and builds an empty vocabulary)."""
    path = directory / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join([*specials, *WORDS]) + "\n", encoding="utf-8")
    return path


def _swap_import(source: str, flavour: Flavour) -> str:
    marked = _MARKED_IMPORT.findall(source)
    if len(marked) != 1:
        raise ValueError("a differential script needs exactly one '# trainer-import' line")
    if flavour == "transformers":
        return source
    return _MARKED_IMPORT.sub(r"from trainbus import \1# trainer-import", source)


@contextmanager
def _inside(directory: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


@contextmanager
def _importable(directory: Path) -> Iterator[None]:
    """Let the script import its sibling modules, as ``python script.py`` would."""
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def relative_files(root: Path) -> set[str]:
    """Every file under ``root``, as paths relative to it (hidden staging files included)."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def run_script(name: str, flavour: Flavour, workdir: Path, **inputs: Any) -> dict[str, Any]:
    """Run ``hf_scripts/<name>.py`` on ``flavour``'s Trainer inside ``workdir``.

    ``inputs`` become globals of the script (``WORKDIR`` and ``VOCAB`` are always set). Returns
    the script's ``RESULT`` dict, plus ``"files"``: what the run left under ``WORKDIR/out``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    source = _swap_import((SCRIPTS / f"{name}.py").read_text(encoding="utf-8"), flavour)
    namespace: dict[str, Any] = {
        "__name__": f"hf_script_{name}_{flavour}",
        "WORKDIR": workdir,
        "VOCAB": tiny_vocab(workdir),
        **inputs,
    }
    _seed_everything(0)
    with _inside(workdir), _importable(SCRIPTS):
        exec(compile(source, str(SCRIPTS / f"{name}.py"), "exec"), namespace)
    result = dict(namespace["RESULT"])
    out = workdir / "out"
    result["files"] = relative_files(out) if out.is_dir() else set()
    return result
