"""DVCLive sink writing through the real DVCLive, read back with DVCLive's own readers."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact, ArtifactKind
from trainbus.sinks.dvclive import DVCLiveSink

pytest.importorskip("dvclive")


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in an empty working directory, so nothing it does can reach the checkout
    (DVCLive looks for a repository from the working directory)."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
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


@pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc.*")
async def test_final_model_is_tracked_by_dvc(tmp_path: Path, _cwd: Path) -> None:
    """Inside a DVC repository, HF_DVCLIVE_LOG_MODEL=true has DVC track the final model (a
    .dvc pointer file next to it) and leaves checkpoints alone."""
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], check=True, timeout=120)
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
    sink = DVCLiveSink.from_env(
        {"HF_DVCLIVE_LOG_MODEL": "1"}, run_dir=_cwd / "out" / "trainbus" / "run", run_name="r"
    )
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    assert (_cwd / "out" / "final.dvc").is_file()
    assert not (_cwd / "out" / "checkpoint-3.dvc").exists()


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
    assert DVCLiveSink.from_env(env, run_dir=tmp_path, run_name="r").log_model == expected


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
    assert sink.directory == tmp_path / "dvclive"
    assert "dvclive" in available_integrations({})
