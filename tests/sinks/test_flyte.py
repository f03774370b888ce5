"""Flyte sink inside real flytekit local executions: the task's checkpoint store read back with
flytekit's ``SyncCheckpoint``, the deck read back with ``get_deck()``, and transformers'
``FlyteCallback`` run on the same training for comparison."""

from __future__ import annotations

import json
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.sinks._log_table import log_table_html

flytekit = pytest.importorskip("flytekit")
pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flytekit's sandboxes and decks go under the test's directory, its config is looked up
    in an empty home."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


class _Tables(HTMLParser):
    """The rows of the deck's log-history table, as {column: cell text}."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[dict[str, str]] = []
        self._inside = False
        self._cells: list[str] | None = None
        self._text: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("class", "trainbus-log-history") in attrs:
            self._inside = True
        elif self._inside and tag == "tr":
            self._cells = []
        elif self._inside and tag in ("th", "td"):
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if not self._inside:
            return
        if tag in ("th", "td") and self._cells is not None and self._text is not None:
            self._cells.append(self._text)
            self._text = None
        elif tag == "tr" and self._cells is not None:
            if not self.header:
                self.header = self._cells
            else:
                self.rows.append({k: v for k, v in zip(self.header, self._cells, strict=True) if v})
            self._cells = None
        elif tag == "table":
            self._inside = False


def _deck_rows(deck: str) -> list[dict[str, str]]:
    parser = _Tables()
    parser.feed(deck)
    return parser.rows


def _shown(row: dict[str, Any]) -> dict[str, str]:
    """A log entry as the deck prints it."""
    return {k: f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in row.items()}


def _train(
    workdir: Path, flavour: str, *, continue_run: bool = False
) -> tuple[dict[str, Any], str]:
    from tests.support.flyte_tasks import train_in_task

    with flytekit.new_context() as ctx:
        out = json.loads(
            train_in_task(workdir=str(workdir), flavour=flavour, continue_run=continue_run)
        )
        return out, str(ctx.get_deck())


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_task_store_and_deck_and_transformers_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report_to=["flyte"] in a task pushes the last checkpoint to the task's store, as
    transformers' FlyteCallback does (same files), flytekit restores it for a retry, and the
    deck shows every log entry of train(), evaluate() and predict() of the one run, a deck
    transformers' callback cannot render without its plugin."""
    ours, our_deck = _train(tmp_path, "trainbus", continue_run=True)
    # transformers' probe for the deck plugin crashes when no flytekitplugins package exists at
    # all; an empty namespace package lets it fall back to checkpoints only, with its warning.
    (tmp_path / "shim" / "flytekitplugins").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "shim"))
    theirs, their_deck = _train(tmp_path, "transformers")

    checkpoint = Path(ours["output_dir"]) / "checkpoint-4"
    stored = _files(Path(ours["store"]))
    assert stored == _files(checkpoint)
    their_stored = _files(Path(theirs["store"]))
    assert their_stored == _files(Path(theirs["output_dir"]) / "checkpoint-4")
    # trainbus writes the arguments as JSON where transformers pickles them (never unpickled)
    assert set(their_stored) - {"training_args.bin"} == set(stored) - {"training_args.json"}

    restored = tmp_path / "restored"
    restored.mkdir()
    retry = flytekit.core.checkpointer.SyncCheckpoint(
        checkpoint_dest=str(tmp_path / "next"), checkpoint_src=ours["store"]
    )
    assert retry.restore(restored) == restored
    assert json.loads((restored / "trainer_state.json").read_text())["global_step"] == 4
    assert _files(restored) == stored

    history = ours["log_history"]
    assert {"eval_loss", "step"} <= set(history[-1])
    predict_row = _deck_rows(our_deck)[-1]
    assert set(predict_row) == {
        "test_loss",
        "test_runtime",
        "test_samples_per_second",
        "test_steps_per_second",
        "step",
    }
    assert _deck_rows(our_deck) == [_shown(row) for row in history] + [predict_row]
    assert "Log History" not in their_deck


def test_sink_works_from_a_thread_without_the_task_context(tmp_path: Path) -> None:
    """A sink built in the task pushes from any thread: it carries the task's context along."""
    from tests.support.flyte_tasks import push_from_plain_thread

    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\x01" * 32)
    out = json.loads(
        push_from_plain_thread(checkpoint=str(checkpoint), run_dir=str(tmp_path / "run"))
    )
    assert out["synced"] == [str(checkpoint.resolve())]
    assert _files(Path(out["store"])) == {"model.safetensors": b"\x01" * 32}


def test_outside_a_task_it_is_one_error_before_training(tmp_path: Path) -> None:
    """Named outside a Flyte task, the integration fails before the first step, saying why."""
    from tests.support.tiny_bert import tiny_bert
    from trainbus import Trainer, TrainingArguments

    model, rows = tiny_bert()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, save_steps=1, report_to=["flyte"]
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    with pytest.raises(ConfigurationError, match="no Flyte task is running"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_the_sink_process_is_refused_before_training(tmp_path: Path) -> None:
    """TRAINBUS_SINK_PROCESS would rebuild the sink in a process without the task: refused."""
    from trainbus.sinks.flyte import FlyteSink

    with pytest.raises(ConfigurationError, match="TRAINBUS_SINK_PROCESS set"):
        FlyteSink.from_env({"TRAINBUS_SINK_PROCESS": "1"}, run_dir=tmp_path, run_name="r")


def test_registry_builds_it_by_name_and_all_never_picks_it() -> None:
    """The name "flyte" builds FlyteSink; "all" leaves it out with flytekit installed, as HF."""
    from trainbus.orchestrator.registry import available_integrations, load_sink_class
    from trainbus.sinks.flyte import FlyteSink

    assert load_sink_class("flyte") is FlyteSink
    assert "flyte" not in available_integrations({})


def test_log_table_escapes_and_leaves_missing_cells_empty() -> None:
    """Keys and values are HTML-escaped; an entry without a column gets an empty cell."""
    table = log_table_html([{"loss": 0.5, "step": 1}, {"<b>": "x&y", "step": 2}])
    assert "<th>&lt;b&gt;</th>" in table and "<td>x&amp;y</td>" in table
    assert _deck_rows(table) == [{"loss": "0.5", "step": "1"}, {"<b>": "x&y", "step": "2"}]
    assert log_table_html([]) == ""
