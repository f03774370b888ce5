"""DVCLive sink writing through the real DVCLive, read back with DVCLive's own readers."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

from tests.sinks.dvc_repo import isolate_dvc
from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact, ArtifactKind
from trainbus.sinks.dvclive import DVCLiveSink

pytest.importorskip("dvclive")


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in an empty working directory, so nothing it does can reach the checkout
    (DVCLive looks for a repository from the working directory)."""
    isolate_dvc(tmp_path, monkeypatch)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _reader(directory: Path) -> Any:
    """What DVCLive's readers need of a ``Live``: where the plots and the summary are."""
    return SimpleNamespace(
        plots_dir=str(directory / "plots"), metrics_file=str(directory / "metrics.json")
    )


def _dvclive(module: str) -> Any:
    """A DVCLive module, untyped as DVCLive's readers are."""
    return importlib.import_module(f"dvclive.{module}")


def _history(directory: Path, name: str) -> list[tuple[int, Any]]:
    """(step, value) rows of one metric, parsed by DVCLive's TSV reader."""
    column = name.rsplit("/", 1)[-1]
    rows = _dvclive("utils").parse_tsv(directory / "plots" / "metrics" / f"{name}.tsv")
    return [(int(row["step"]), float(row[column])) for row in rows]


async def test_run_reads_back_with_dvclive(tmp_path: Path, _cwd: Path) -> None:
    """Through a real Bus, every metric is one TSV row at its global step under HF's DVCLive
    names, the summary holds the last values, params have secrets masked, and nothing is
    written to the working directory, a git repository without DVC (which DVCLive alone
    would initialise)."""
    utils, serialize = _dvclive("utils"), _dvclive("serialize")
    subprocess.run(["git", "init", "-q"], check=True, timeout=60)
    run_dir = tmp_path / "run"
    sink = DVCLiveSink.from_env({}, run_dir=run_dir, run_name="tiny-run")
    with anyio.fail_after(60):
        report = await deliver_through_bus(scripted_run(20, eval_every=10), [sink], run_dir)
    assert report["dvclive"].undelivered == 0
    directory = run_dir / "dvclive"
    steps, values = utils.read_history(_reader(directory), "loss")
    assert steps == list(range(1, 21))
    assert values == [pytest.approx(train_logs(s)["loss"]) for s in range(1, 21)]
    assert _history(directory, "eval/accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20)
    ]
    assert _history(directory, "eval/loss") == [
        (s, pytest.approx(eval_logs(s)["eval_loss"])) for s in (10, 20)
    ]
    _, latest = utils.parse_metrics(_reader(directory))
    assert latest["step"] == 20
    assert latest["eval"]["loss"] == pytest.approx(eval_logs(20)["eval_loss"])
    params = serialize.load_yaml(directory / "params.yaml")
    assert params["learning_rate"] == 0.001 and params["hub_token"] == "***"
    assert [p.name for p in _cwd.iterdir()] == [".git"]
    assert (
        subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, check=True, timeout=60
        ).stdout
        == b""
    )


async def test_restart_resumes_files_without_duplicate_rows(tmp_path: Path) -> None:
    """A new sink on the same run directory keeps the earlier rows, and a batch delivered
    again after a restart adds none."""
    events = scripted_run(12, eval_every=4)
    for upto in (14, len(events)):
        sink = DVCLiveSink(run_dir=tmp_path)
        with anyio.fail_after(30):
            await sink.open()
            await sink.write(events[:upto])
            await sink.write(events[:upto])  # a retry of the same batch in the same process
            await sink.close()
    directory = tmp_path / "dvclive"
    assert [step for step, _ in _history(directory, "loss")] == list(range(1, 13))
    assert [step for step, _ in _history(directory, "eval/loss")] == [4, 8, 12]


async def test_summary_ends_on_the_last_logged_step(tmp_path: Path) -> None:
    """metrics.json holds the last value of every metric and the last step, also when the
    batch that ends the run brings more steps than the one before it (DVCLive's end() takes
    the step back from the summary the previous batch wrote)."""
    utils = _dvclive("utils")
    events = scripted_run(12, eval_every=5)
    sink = DVCLiveSink(run_dir=tmp_path)
    with anyio.fail_after(30):
        await sink.open()
        await sink.write(events[:8])
        await sink.write(events[8:])
        await sink.close()
    _, latest = utils.parse_metrics(_reader(tmp_path / "dvclive"))
    assert latest["step"] == 12
    assert latest["loss"] == pytest.approx(train_logs(12)["loss"])
    assert latest["learning_rate"] == pytest.approx(train_logs(12)["learning_rate"])
    assert latest["eval"]["accuracy"] == pytest.approx(eval_logs(10)["eval_accuracy"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc.*")
async def test_final_model_is_tracked_by_dvc_without_git(tmp_path: Path, _cwd: Path) -> None:
    """In a DVC repository without git (no experiments), HF_DVCLIVE_LOG_MODEL=true copies the
    final model into the run's dvclive/artifacts and has DVC track it there, as transformers
    copies it into ./dvclive; checkpoints are left alone."""
    from dvc.repo import Repo

    Repo.init(str(_cwd), no_scm=True).close()
    paths = {}
    for name in ("checkpoint-3", "final"):
        paths[name] = _cwd / "out" / name
        paths[name].mkdir(parents=True)
        (paths[name] / "model.safetensors").write_bytes(b"\x00" * 64)
    events = scripted_run(3)
    finished = events.pop()
    kinds: list[tuple[str, ArtifactKind]] = [("checkpoint-3", "checkpoint"), ("final", "model")]
    for seq, (name, kind) in enumerate(kinds):
        events.append(
            Artifact(
                run_id=finished.run_id,
                seq=finished.seq + seq,
                time=finished.time,
                global_step=3,
                path=str(paths[name]),
                kind=kind,
                name=name,
            )
        )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 2))
    run_dir = _cwd / "out" / "trainbus" / "run"
    sink = DVCLiveSink.from_env({"HF_DVCLIVE_LOG_MODEL": "1"}, run_dir=run_dir, run_name="r")
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    artifacts = run_dir / "dvclive" / "artifacts"
    assert (artifacts / "final.dvc").is_file()
    assert (artifacts / "final" / "model.safetensors").is_file()
    assert not (_cwd / "out" / "checkpoint-3.dvc").exists()
    assert not (_cwd / "dvclive").exists()


async def test_artifact_holding_the_run_directory_is_skipped(tmp_path: Path) -> None:
    """A model saved to output_dir itself (which holds the run's journal) is not handed to
    DVC, with a warning; the run's metrics still land."""
    run_dir = tmp_path / "out" / "trainbus" / "run"
    events = scripted_run(2)
    finished = events.pop()
    events.append(
        Artifact(
            run_id="run-1",
            seq=finished.seq,
            time=finished.time,
            global_step=2,
            path=str(tmp_path / "out"),
            kind="model",
        )
    )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 1))
    sink = DVCLiveSink(run_dir=run_dir, log_model=True)
    with capture_logs() as logs, anyio.fail_after(30):
        await sink.open()
        await sink.write(events)
        await sink.close()
    assert any(e["event"] == "dvclive artifact holds the run directory, skipped" for e in logs)
    assert [s for s, _ in _history(run_dir / "dvclive", "loss")] == [1, 2]


async def test_params_yaml_cannot_hold_are_dropped_not_the_metrics(tmp_path: Path) -> None:
    """A config value DVCLive cannot write as YAML costs the params, with a warning, and the
    metrics of the same batch still land."""
    events = scripted_run(3)
    events[0] = msgspec.structs.replace(events[0], config={"lr": 0.1, "odd": object()})
    sink = DVCLiveSink(run_dir=tmp_path)
    with capture_logs() as logs, anyio.fail_after(30):
        await sink.open()
        await sink.write(events)
        await sink.close()
    assert [s for s, _ in _history(tmp_path / "dvclive", "loss")] == [1, 2, 3]
    assert any(entry["event"] == "dvclive refused the params, dropped" for entry in logs)


@pytest.mark.parametrize(
    ("value", "expected"), [("all", "all"), ("TRUE", True), ("1", True), ("false", False)]
)
def test_log_model_follows_hf(value: str, expected: object, tmp_path: Path) -> None:
    """HF_DVCLIVE_LOG_MODEL: "all" logs every checkpoint, a truthy value the final model."""
    env = {"HF_DVCLIVE_LOG_MODEL": value}
    sink = DVCLiveSink.from_env(env, run_dir=tmp_path, run_name="r")
    assert sink.log_model == expected
    assert sink.wants_final_model == bool(expected)


def test_bad_log_model_is_refused_with_a_sentence(tmp_path: Path) -> None:
    """An unknown HF_DVCLIVE_LOG_MODEL value fails before the run, naming the variable."""
    with pytest.raises(
        ConfigurationError, match=r"HF_DVCLIVE_LOG_MODEL='.*' is not a boolean; .* \(or 'all'\)"
    ):
        DVCLiveSink.from_env({"HF_DVCLIVE_LOG_MODEL": "sometimes"}, run_dir=tmp_path, run_name="r")


def test_report_to_dvclive_builds_the_sink(tmp_path: Path) -> None:
    """report_to=["dvclive"] builds the sink from the environment, and "all" includes it
    whenever DVCLive is installed, as in Hugging Face."""
    from trainbus.orchestrator.registry import available_integrations, build_sinks

    env = {"HF_DVCLIVE_LOG_MODEL": "all"}
    [(name, sink)] = build_sinks(["dvclive"], env, run_dir=tmp_path, run_name="r")
    assert name == "dvclive" and isinstance(sink, DVCLiveSink) and sink.log_model == "all"
    assert sink.run_dir == tmp_path and sink.wants_final_model and sink.save_dvc_exp
    assert "dvclive" in available_integrations({})
