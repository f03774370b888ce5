"""Checkpoints cross between the Trainers: ours load in transformers, transformers' load in ours.

One transformers script (``hf_scripts/checkpoint_interop.py``: a tiny BERT classifier, a
tokenizer, checkpoints every 3 of 6 steps) runs on both Trainers, uninterrupted, then resumed from
step 3 of the other Trainer's checkpoint, and of its own. Parameter states are compared by name,
since our optimizer may group parameters differently from transformers'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from tests.support.hf_differential import WORDS, run_script

transformers = pytest.importorskip("transformers")

SCRIPT = "checkpoint_interop"
SAVED_AT = 3


def _run(root: Path, flavour: str, name: str, resume: Path | None = None) -> dict[str, Any]:
    return run_script(
        SCRIPT,
        flavour,  # type: ignore[arg-type]  # a Flavour, spelled out by the callers
        root / name,
        MAX_STEPS=6,
        SAVE_STEPS=SAVED_AT,
        WEIGHT_DECAY=0.0,
        WORDS=WORDS,
        RESUME=None if resume is None else str(resume),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The five runs, shared by the tests of this module (a few seconds in all)."""
    root = tmp_path_factory.mktemp("interop")
    out: dict[str, dict[str, Any]] = {
        "hf": _run(root, "transformers", "hf"),
        "ours": _run(root, "trainbus", "ours"),
    }
    out["hf_from_ours"] = _run(root, "transformers", "hf_from_ours", _ckpt(root / "ours"))
    out["ours_from_hf"] = _run(root, "trainbus", "ours_from_hf", _ckpt(root / "hf"))
    out["hf_from_hf"] = _run(root, "transformers", "hf_from_hf", _ckpt(root / "hf"))
    for name, result in out.items():
        result["dir"] = root / name / "out"
    return out


def _ckpt(workdir: Path, step: int = SAVED_AT) -> Path:
    return workdir / "out" / f"checkpoint-{step}"


def _assert_same_tensors(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_same_tensors(actual[key], value)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(actual[key], value), key
        else:
            assert actual[key] == value, key


def _resumed_losses(result: dict[str, Any]) -> dict[int, float]:
    return {step: loss for step, loss in result["losses"].items() if step > SAVED_AT}


def test_our_checkpoint_has_transformers_file_names(runs: dict[str, dict[str, Any]]) -> None:
    """Checkpoints and ``save_model`` hold transformers' files, ``training_args.bin`` (a pickle of
    the arguments object) written as ``training_args.json`` instead."""
    theirs = {
        name.replace("training_args.bin", "training_args.json") for name in runs["hf"]["files"]
    }
    ours = {name for name in runs["ours"]["files"] if not name.startswith("trainbus/")}
    assert ours == theirs
    assert {"checkpoint-3/config.json", "checkpoint-3/tokenizer.json", "final/config.json"} <= ours


def test_our_checkpoint_loads_with_from_pretrained(runs: dict[str, dict[str, Any]]) -> None:
    """``AutoModel…from_pretrained(checkpoint)`` gets our weights; ``AutoTokenizer`` our vocab."""
    ours = runs["ours"]
    for directory in (ours["dir"] / "checkpoint-6", ours["dir"] / "final"):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(directory)
        _assert_same_tensors(dict(model.state_dict()), ours["weights"])
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        assert len(tokenizer) == 5 + len(WORDS)
        assert tokenizer("the cat sat")["input_ids"] == [2, 5, 7, 9, 3]
    at_save = safetensors.torch.load_file(str(ours["dir"] / "checkpoint-3" / "model.safetensors"))
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        ours["dir"] / "checkpoint-3"
    )
    _assert_same_tensors(dict(loaded.state_dict()), at_save)


@pytest.mark.parametrize(
    ("resumed", "writer"), [("hf_from_ours", "ours"), ("ours_from_hf", "hf")], ids=["hf", "ours"]
)
def test_the_other_trainer_resumes_with_the_saved_state(
    runs: dict[str, dict[str, Any]], resumed: str, writer: str
) -> None:
    """Resumed from the other Trainer's checkpoint: same step, and exactly the optimizer state,
    learning rates and generator states that Trainer had when it saved."""
    result, saved = runs[resumed], runs[writer]["at_save"][SAVED_AT]
    assert result["at_begin"]["global_step"] == SAVED_AT
    assert result["at_begin"]["scheduler_last_epoch"] == SAVED_AT
    _assert_same_tensors(result["at_begin"]["optimizer"], saved["optimizer"])
    _assert_same_tensors(result["first_step_rng"], saved["rng"])
    # The generators did move before the save, so a resume that skipped them would show here.
    assert runs[writer]["first_step_rng"]["python"] != saved["rng"]["python"]
    assert not torch.equal(runs[writer]["first_step_rng"]["cpu"], saved["rng"]["cpu"])


@pytest.mark.parametrize("resumed", ["hf_from_ours", "ours_from_hf"])
def test_the_resumed_run_continues_the_uninterrupted_curve(
    runs: dict[str, dict[str, Any]], resumed: str
) -> None:
    """Steps 4-6 after a cross resume: the losses and learning rates of the uninterrupted run and
    of transformers resuming its own checkpoint, and the same final weights."""
    result = runs[resumed]
    assert result["global_step"] == 6
    expected = _resumed_losses(runs["hf"])
    assert list(_resumed_losses(result)) == [4, 5, 6]
    assert _resumed_losses(result) == pytest.approx(expected, rel=1e-5)
    assert _resumed_losses(runs["hf_from_hf"]) == pytest.approx(expected, rel=1e-5)
    rates = {step: lr for step, lr in result["learning_rates"].items() if step > SAVED_AT}
    assert rates == pytest.approx(
        {step: lr for step, lr in runs["hf"]["learning_rates"].items() if step > SAVED_AT}
    )
    for name, value in runs["hf"]["weights"].items():
        torch.testing.assert_close(result["weights"][name], value, rtol=1e-5, atol=1e-7)
