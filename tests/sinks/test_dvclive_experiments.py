"""DVCLive sink inside a git + DVC repository: each training run is one DVC experiment, read
back with DVC's own commands (``dvc exp show``, ``dvc metrics show``, ``dvc plots show``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest

from tests.sinks.dvc_repo import experiments, git, isolate_dvc, make_repo, run_dvc
from tests.sinks.scripted import CONFIG, deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact, Event, Log, Predict
from trainbus.sinks.dvclive import DVCLiveSink

pytest.importorskip("dvclive")

# Every test saves experiments (a `dvc exp save` each) and reads them with DVC's commands.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc.*")]

METRICS = "dvclive/metrics.json"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repository with one commit that ignores ``out/``; the working directory."""
    isolate_dvc(tmp_path, monkeypatch)
    path = make_repo(tmp_path / "repo", ignore="out/\n")
    monkeypatch.chdir(path)
    return path


async def _session(sink: DVCLiveSink, events: Sequence[Event]) -> None:
    """One opening of the sink, as the orchestrator does for each train/evaluate/predict call."""
    with anyio.fail_after(120):
        await sink.open()
        await sink.write(events)
        await sink.close()


def _continuation(after: Sequence[Event], *bodies: Event) -> list[Event]:
    """What an ``evaluate()``/``predict()`` after the run publishes: RunStarted, the bodies,
    RunFinished, numbered on from ``after``."""
    first, last = after[0], after[-1]
    events: list[Event] = [msgspec.structs.replace(first, seq=last.seq + 1)]
    events += [msgspec.structs.replace(b, seq=last.seq + 2 + i) for i, b in enumerate(bodies)]
    events.append(msgspec.structs.replace(last, seq=last.seq + 2 + len(bodies)))
    return events


async def test_run_in_a_dvc_repository_is_one_experiment(repo: Path) -> None:
    """The run becomes one DVC experiment with its params and final metrics; ``dvc metrics
    show`` and ``dvc plots show`` see ``./dvclive`` in the workspace although ``out/`` is
    git-ignored; the user's own files are untouched (no root dvc.yaml, nothing staged)."""
    run_dir = repo / "out" / "trainbus" / "run-1"
    sink = DVCLiveSink.from_env({}, run_dir=run_dir, run_name="r")
    with anyio.fail_after(120):
        report = await deliver_through_bus(scripted_run(20, eval_every=10), [sink], run_dir)
    assert report["dvclive"].undelivered == 0

    [data] = experiments(repo).values()
    summary = data["metrics"][METRICS]["data"]
    assert summary["step"] == 20
    assert summary["loss"] == pytest.approx(train_logs(20)["loss"])
    assert summary["eval"]["loss"] == pytest.approx(eval_logs(20)["eval_loss"])
    params = data["params"]["dvclive/params.yaml"]["data"]
    assert params["learning_rate"] == CONFIG["learning_rate"] and params["hub_token"] == "***"

    assert run_dvc("metrics", "show", cwd=repo)[""]["data"][METRICS]["data"] == summary
    plots = run_dvc("plots", "show", cwd=repo)["data"]
    points = plots["dvclive/plots/metrics/eval/loss.tsv"][0]["content"]["data"]["values"]
    assert [(int(p["step"]), float(p["loss"])) for p in points] == [
        (s, pytest.approx(eval_logs(s)["eval_loss"])) for s in (10, 20)
    ]
    assert not (repo / "dvc.yaml").exists()
    assert git("status", "--porcelain", cwd=repo).splitlines() == ["?? dvclive/"]


async def test_evaluate_and_predict_continue_the_same_experiment(repo: Path) -> None:
    """A new sink on the same run directory (evaluate(), then predict(), after train()) adds
    its metrics to the run's experiment instead of saving a second one; params stay those of
    the first session; predict()'s metrics are in the summary as test/*."""
    run_dir = repo / "out" / "trainbus" / "run-1"
    train = scripted_run(8, eval_every=4)
    await _session(DVCLiveSink.from_env({}, run_dir=run_dir, run_name="r"), train)
    [name] = experiments(repo)

    evaluate = _continuation(
        train, Log(run_id="run-1", seq=0, time=0.0, global_step=8, logs={"eval_loss": 0.125})
    )
    evaluate[0] = msgspec.structs.replace(evaluate[0], config={"learning_rate": 9.0})
    await _session(DVCLiveSink.from_env({}, run_dir=run_dir, run_name="r"), evaluate)
    predict = _continuation(
        evaluate,
        Predict(run_id="run-1", seq=0, time=0.0, global_step=8, metrics={"test_loss": 0.25}),
    )
    await _session(DVCLiveSink.from_env({}, run_dir=run_dir, run_name="r"), predict)

    found = experiments(repo)
    assert list(found) == [name]
    summary = found[name]["metrics"][METRICS]["data"]
    assert summary["eval"]["loss"] == 0.125 and summary["test"] == {"loss": 0.25}
    assert summary["step"] == 8 and summary["loss"] == pytest.approx(train_logs(8)["loss"])
    assert found[name]["params"]["dvclive/params.yaml"]["data"]["learning_rate"] == 0.001


async def test_final_model_is_copied_and_declared_checkpoints_tracked(
    repo: Path, tmp_path: Path
) -> None:
    """HF_DVCLIVE_LOG_MODEL=all: the final model is copied into dvclive/artifacts and declared
    as the model "last" (DVC's own artifact reader finds it), each checkpoint is tracked by DVC
    where it is, and the experiment keeps the pointer files."""
    from dvc.repo import Repo

    (repo / ".gitignore").write_text("")  # checkpoints tracked in place need an output dir
    git("commit", "-q", "-am", "track out", cwd=repo)  # that git does not ignore
    out = repo / "out"
    paths = {}
    for name in ("checkpoint-3", "final"):
        paths[name] = out / name
        paths[name].mkdir(parents=True)
        (paths[name] / "model.safetensors").write_bytes(b"\x00" * 64)
    events = scripted_run(3)
    finished = events.pop()
    for i, (name, kind) in enumerate((("checkpoint-3", "checkpoint"), ("final", "model"))):
        events.append(
            Artifact(
                run_id="run-1",
                seq=finished.seq + i,
                time=finished.time,
                global_step=3,
                path=str(paths[name]),
                kind=kind,  # type: ignore[arg-type]
                name=name,
            )
        )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 2))
    sink = DVCLiveSink.from_env(
        {"HF_DVCLIVE_LOG_MODEL": "all"}, run_dir=out / "trainbus" / "run-1", run_name="r"
    )
    assert sink.wants_final_model
    await _session(sink, events)

    assert (repo / "dvclive" / "artifacts" / "final" / "model.safetensors").is_file()
    assert (repo / "dvclive" / "artifacts" / "final.dvc").is_file()
    assert (out / "checkpoint-3.dvc").is_file()
    with Repo(str(repo)) as dvc:
        declared = dvc.artifacts.read()["dvclive/dvc.yaml"]
    assert set(declared) == {"last"} and declared["last"].type == "model"
    [name] = experiments(repo)
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo).split()
    [ref] = [r for r in refs if r.endswith(f"/{name}")]  # refs/exps/<baseline>/<name>
    tree = git("ls-tree", "-r", "--name-only", ref, cwd=repo).split()
    assert {"dvclive/artifacts/final.dvc", "out/checkpoint-3.dvc", "dvclive/dvc.yaml"} <= set(tree)


async def test_a_given_live_is_used_and_ended_at_each_run_end(repo: Path) -> None:
    """DVCLiveSink(live=...) writes through the caller's Live (its directory and dvc.yaml, as
    transformers' DVCLiveCallback(live=...)), ends it when the run finishes, and a later
    evaluate() on the same sink updates the same experiment."""
    from dvclive import Live

    live = Live(dir="mine")
    sink = DVCLiveSink(live=live)
    train = scripted_run(4, eval_every=2)
    train[0] = msgspec.structs.replace(train[0], output_dir=str(repo / "out"))
    await _session(sink, train)
    [name] = experiments(repo)
    evaluate = _continuation(
        train, Log(run_id="run-1", seq=0, time=0.0, global_step=4, logs={"eval_loss": 0.5})
    )
    await _session(sink, evaluate)

    found = experiments(repo)
    assert list(found) == [name]
    summary = found[name]["metrics"]["mine/metrics.json"]["data"]
    assert summary["eval"]["loss"] == 0.5 and summary["step"] == 4
    assert (repo / "dvc.yaml").is_file()  # the caller's Live keeps DVCLive's default dvc.yaml
    assert not (repo / "dvclive").exists()


def test_live_must_be_a_dvclive_live() -> None:
    """Anything else than a dvclive.Live is refused when the sink is built, naming its type."""
    with pytest.raises(ConfigurationError, match=r"takes a dvclive\.Live, got dict"):
        DVCLiveSink(live={})
    with pytest.raises(ConfigurationError, match="needs run_dir"):
        DVCLiveSink()
