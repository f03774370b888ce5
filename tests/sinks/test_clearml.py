"""ClearML sink on the real SDK in offline mode, read back from the offline session ClearML writes.

``Task.import_offline_session`` needs a ClearML server to import into, so the tests read what it
would import: the session's zip, with ``task.json`` parsed by the SDK's own task model and
``metrics.jsonl`` as the SDK's importer reads it (one JSON list of events per line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil  # type: ignore[import-untyped]  # no stubs in the environment
import pytest

from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Artifact, Event, Log, Predict
from trainbus.sinks._clearml_sdk import IN_PROCESS_REPORTING, prefer_in_process_reporting
from trainbus.sinks.clearml import ClearMLSink, _map_errors

pytest.importorskip("clearml")

REPO = Path(__file__).resolve().parents[2]
SUMMARY = -(2**31)  # the iteration ClearML gives single values


class OfflineSession:
    """One task's offline session, from the zip ``Task.import_offline_session`` would take."""

    def __init__(self, archive: Path) -> None:
        from clearml.backend_api.services import tasks

        with zipfile.ZipFile(archive) as zf:
            self.raw: dict[str, Any] = json.loads(zf.read("task.json"))
            lines = zf.read("metrics.jsonl").decode().splitlines() if _has(zf, "metrics") else []
            self.names = set(zf.namelist())
        self.task = tasks.Task(**self.raw)  # as the SDK loads an offline task
        self.events = [event for line in lines if line.strip() for event in json.loads(line)]

    def scalars(self, title: str, series: str) -> list[tuple[int, float]]:
        """(iteration, value) of every point of one series, in report order."""
        return [
            (e["iter"], e["value"])
            for e in self.events
            if e.get("type") == "training_stats_scalar"
            and (e["metric"], e["variant"]) == (title, series)
        ]

    def series(self) -> set[tuple[str, str]]:
        """Every (title, series) reported, ClearML's monitoring left out."""
        return {
            (e["metric"], e["variant"])
            for e in self.events
            if e.get("type") == "training_stats_scalar" and not e["metric"].startswith(":")
        }

    def single_values(self) -> dict[str, float]:
        return {
            s: v[-1][1] for t, s in self.series() if t == "Summary" for v in [self.scalars(t, s)]
        }

    def hyperparams(self, section: str) -> dict[str, str]:
        params = (self.task.hyperparams or {}).get(section) or {}
        return {name: item.value for name, item in params.items()}

    def models(self) -> list[dict[str, Any]]:
        return list(self.raw.get("offline_output_models") or [])


def _has(zf: zipfile.ZipFile, stem: str) -> bool:
    return f"{stem}.jsonl" in zf.namelist()


def sessions(cache: Path) -> list[Path]:
    return sorted((cache / "offline").glob("offline-*.zip"))


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The SDK offline, with its home and cache in the test's directory; every process the
    SDK started is gone afterwards (processes this worker had before, such as the wandb-core an
    earlier W&B test leaves for the life of the process, are not the SDK's)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"CLEARML_OFFLINE_MODE": "1", "CLEARML_CACHE_DIR": str(tmp_path / "cache")}
    monkeypatch.setenv("HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("CLEARML_PROJECT", "CLEARML_TASK", "CLEARML_LOG_MODEL", "CLEARML_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield env
    leftover = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for process in leftover:
        process.kill()
    assert not leftover, f"ClearML left processes behind: {leftover}"


def _with_final_scalars(events: list[Event], steps: int) -> list[Event]:
    """HF's end-of-training Log (single-value scalars), then a Predict, before RunFinished."""
    finished = events.pop()
    extra: list[Event] = [
        Log(
            run_id=finished.run_id,
            seq=finished.seq,
            time=finished.time,
            global_step=steps,
            logs={"train_runtime": 12.5, "train_loss": 0.3, "total_flos": 1e9, "epoch": 2.0},
        ),
        Predict(
            run_id=finished.run_id,
            seq=finished.seq + 1,
            time=finished.time,
            global_step=steps,
            metrics={"test_loss": 0.25, "test_runtime": 0.1},
        ),
    ]
    return [*events, *extra, msgspec.structs.replace(finished, seq=finished.seq + 2)]


def _checkpoint(output_dir: Path, step: int) -> Path:
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes([step]) * 64)
    return path


async def test_offline_session_holds_scalars_params_and_models(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """Through a real Bus, the session holds every number under HF's titles at its global
    step, single values as ClearML single values, the arguments (no ``*_token`` field, secrets
    masked) and the model config, and the checkpoints as output models, the oldest removed
    beyond save_total_limit."""
    output_dir = tmp_path / "out"
    run_dir = output_dir / "trainbus" / "run"
    events = scripted_run(20, eval_every=10)
    started = events[0]
    config = {**started.config, "save_total_limit": 1, "api_key": "k" * 8}  # type: ignore[union-attr]
    events[0] = msgspec.structs.replace(started, config=config)
    finished = events.pop()
    for offset, step in enumerate((10, 20)):
        path = _checkpoint(output_dir, step)
        events.append(
            Artifact(
                run_id=finished.run_id,
                seq=finished.seq + offset,
                time=finished.time,
                global_step=step,
                path=str(path),
                kind="checkpoint",
                name=path.name,
            )
        )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 2))
    events = _with_final_scalars(events, 20)
    sink = ClearMLSink.from_env(offline, run_dir=run_dir, run_name="r")
    with anyio.fail_after(120):
        report = await deliver_through_bus(events, [sink], run_dir)
    assert report["clearml"].undelivered == 0
    [archive] = sessions(tmp_path / "cache")
    session = OfflineSession(archive)
    assert session.task.id == sink.task_id == archive.stem
    assert (session.task.name, session.raw["project_name"]) == (
        "Trainer",
        "HuggingFace Transformers",
    )
    assert session.scalars("train", "loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 21)
    ]
    assert session.scalars("eval", "accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20)
    ]
    assert session.scalars("test", "loss") == [(20, 0.25)]
    assert ("train", "epoch") not in session.series()
    assert session.single_values() == {
        "epoch": 2.0,
        "train_runtime": 12.5,
        "train_loss": 0.3,
        "total_flos": 1e9,
    }
    assert all(it == SUMMARY for it, _ in session.scalars("Summary", "epoch"))
    params = session.hyperparams("Transformers")
    assert params["learning_rate"] == "0.001" and params["optim_args/betas"] == "[0.9, 0.99]"
    assert params["api_key"] == "***" and "hub_token" not in params
    assert params["_ignore_hparams_ui_overrides_"] == "True"
    model_config = session.task.configuration["Model Configuration"]
    assert "hidden_size = 16" in model_config.value
    [model] = session.models()  # save_total_limit=1: checkpoint-10's model was removed
    assert model["init"]["name"] == "checkpoint-20" and model["weights"]["iteration"] == 20
    packed = Path(model["weights"]["weights_filename"]).name
    assert f"models/{packed}" in session.names
    with zipfile.ZipFile(archive) as zf, zipfile.ZipFile(zf.open(f"models/{packed}")) as pkg:
        assert pkg.namelist() == ["model.safetensors"]
    saved = json.loads((run_dir / "clearml.json").read_text())
    assert saved["task_id"] == sink.task_id and saved["owned"] is True


async def test_sessions_continue_one_task_without_duplicates(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """A sink opened again on the run directory (evaluate() after train()) continues the same
    task, even after the first closed it; batches delivered twice report no point twice, the
    params are set once, and a model of the first session survives the second."""
    output_dir = tmp_path / "out"
    run_dir = output_dir / "trainbus" / "run"
    events = scripted_run(12, eval_every=4)
    finished = events.pop()
    path = _checkpoint(output_dir, 12)
    events.append(
        Artifact(
            run_id=finished.run_id,
            seq=finished.seq,
            time=finished.time,
            global_step=12,
            path=str(path),
            kind="checkpoint",
        )
    )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 1))
    ids = []
    for upto in (len(events), len(events) + 2):
        batch = events[:upto]
        if upto > len(events):  # the second session: an evaluation at the last step
            last = events[-1]
            batch = [
                *events,
                Log(
                    run_id=last.run_id,
                    seq=last.seq + 1,
                    time=last.time,
                    global_step=12,
                    logs={"eval_loss": 0.5},
                ),
                msgspec.structs.replace(last, seq=last.seq + 2),
            ]
        sink = ClearMLSink.from_env(offline, run_dir=run_dir, run_name="r")
        with anyio.fail_after(120):
            await sink.open()
            await sink.write(batch)
            await sink.write(batch)
            await sink.close()
        ids.append(sink.task_id)
    assert ids[0] == ids[1]
    [archive] = sessions(tmp_path / "cache")
    session = OfflineSession(archive)
    assert [s for s, _ in session.scalars("train", "loss")] == list(range(1, 13))
    assert session.scalars("eval", "loss") == [
        *((s, pytest.approx(eval_logs(s)["eval_loss"])) for s in (4, 8, 12)),
        (12, 0.5),
    ]
    assert [m["init"]["name"] for m in session.models()] == ["checkpoint-12"]
    assert session.hyperparams("Transformers")["learning_rate"] == "0.001"


async def test_close_cannot_hang_reporting_stays_in_process(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """The sink's task reports from a thread of this process, with the repository detected
    before Task.init returns: no forked reporter and no git child left running, which is what
    made Task.close() wait for minutes; and the run completes."""
    from clearml import Task
    from clearml.config import ConfigSDKWrapper

    sink = ClearMLSink.from_env(offline, run_dir=tmp_path / "run", run_name="r")
    events = scripted_run(3)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with anyio.fail_after(120):
        await sink.open()
        await sink.write(events[:-1])
        for key, value in IN_PROCESS_REPORTING.items():
            assert ConfigSDKWrapper.get(f"development.{key}") is value
        assert not bool(Task._report_subprocess_enabled)
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert started == []  # no forked reporter
        await sink.write(events[-1:])
        await sink.close()
    assert len(sessions(tmp_path / "cache")) == 1


async def test_a_running_user_task_is_used_and_left_open(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """A task the user started is reported into and not closed, and logs no model unless
    CLEARML_LOG_MODEL says so, as in HF; the sink stays in the process that holds the task
    (without one it would choose the sink process)."""
    from clearml import Task

    assert ClearMLSink.from_env(
        offline, run_dir=tmp_path / "before", run_name="r"
    ).prefers_sink_process
    # Without the sink's settings the user's own task would detect the repository in the
    # background and wait up to 300 s for it at close.
    prefer_in_process_reporting()
    Task.set_offline(True)
    user_task = Task.init(project_name="mine", task_name="own", auto_resource_monitoring=False)
    try:
        output_dir = tmp_path / "out"
        events = scripted_run(2, checkpoint=_checkpoint(output_dir, 2))
        sink = ClearMLSink.from_env(offline, run_dir=output_dir / "trainbus" / "r", run_name="r")
        assert not sink.prefers_sink_process
        with anyio.fail_after(120):
            await sink.open()
            await sink.write(events)
            await sink.close()
        assert sink.task_id == user_task.id and not sink.logs_models
        assert Task.current_task() is user_task
    finally:
        user_task.close()
    session = OfflineSession(*sessions(tmp_path / "cache"))
    assert [s for s, _ in session.scalars("train", "loss")] == [1, 2]
    assert session.models() == []


def _without_clearml(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}


def _run_child(flavour: str, workdir: Path, env: dict[str, str], save: str) -> str:
    """Run the differential script in a child process; its output, for a failure's message.

    ClearML variables this process inherited or the SDK set in it (an earlier test's task sets
    ``CLEARML_PROC_MASTER_ID``, and a child that inherits it takes itself for a worker of that
    task and creates none) are not passed on: the child starts as a user's script would.
    """
    code = (
        "import sys; from pathlib import Path; "
        "from tests.support.hf_differential import run_script; "
        "run_script('clearml_offline', sys.argv[1], Path(sys.argv[2]), SAVE_STRATEGY=sys.argv[3])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, flavour, str(workdir), save],
        cwd=REPO,
        env={**_without_clearml(os.environ), **env, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    return done.stdout + done.stderr


@pytest.mark.slow
def test_differential_against_transformers_clearml_callback(tmp_path: Path) -> None:
    """The same script with transformers' ClearMLCallback and with ours, both offline in a
    child process: the same titles, series and iterations for every training and evaluation
    point, the same single values, the same hyper-parameter section and configuration object;
    ours also keeps evaluate() after train() and predict()'s metrics in the one task (HF's
    callback reports them to a task it closed), and the last checkpoint as an output model.

    HF's run gets the configuration file that keeps ClearML's close() from hanging, and logs no
    model: offline, the SDK's model upload fails its training run.
    """
    fix = tmp_path / "clearml.conf"
    fix.write_text(
        "sdk { development { vcs_repo_detect_async: false, report_use_subprocess: false } }\n"
    )
    found = {}
    for flavour in ("transformers", "trainbus"):
        root = tmp_path / flavour
        (root / "home").mkdir(parents=True)
        env = {
            "HOME": str(root / "home"),
            "CLEARML_CACHE_DIR": str(root / "cache"),
            "CLEARML_OFFLINE_MODE": "1",
        }
        if flavour == "transformers":
            env |= {"CLEARML_CONFIG_FILE": str(fix), "CLEARML_LOG_MODEL": "false"}
        output = _run_child(flavour, root / "work", env, "steps")
        archives = sessions(root / "cache")
        assert len(archives) == 1, (flavour, archives, output[-4000:])
        [archive] = archives
        found[flavour] = OfflineSession(archive)
    hf, ours = found["transformers"], found["trainbus"]
    during_training = {(t, s) for t, s in hf.series() if t != "test"}
    assert ours.series() - {("test", s) for _, s in ours.series()} >= during_training
    assert ours.series() >= hf.series()
    for title, series in sorted(hf.series()):
        hf_steps = [it for it, _ in hf.scalars(title, series)]
        our_steps = [it for it, _ in ours.scalars(title, series)]
        assert our_steps[: len(hf_steps)] == hf_steps, (title, series)
        # ours also holds the evaluate() after train(): its points at the last step, its epoch
        later = {"eval": [hf_steps[-1]], "Summary": [SUMMARY] if series == "epoch" else []}
        assert our_steps[len(hf_steps) :] == later.get(title, []), (title, series)
    assert {s for t, s in ours.series() if t == "test"} >= {"loss", "runtime"}
    assert set(ours.single_values()) == set(hf.single_values())
    hf_params, our_params = hf.hyperparams("Transformers"), ours.hyperparams("Transformers")
    plain = {k for k, v in hf_params.items() if v in ("True", "False") or _is_number(v)}
    assert {k: our_params.get(k) for k in plain} == {k: hf_params[k] for k in plain}
    assert set(hf_params) <= set(our_params)
    # enums as to_dict() writes them (HF's callback records the enum's name)
    assert (hf_params["eval_strategy"], our_params["eval_strategy"]) == ("STEPS", "steps")
    assert "accelerator_config" in our_params  # HF's callback drops non-builtin values
    assert set(hf.task.configuration) == set(ours.task.configuration) == {"Model Configuration"}
    assert hf.models() == []
    assert [m["init"]["name"] for m in ours.models()] == ["checkpoint-8"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_environment_follows_hf(tmp_path: Path) -> None:
    """CLEARML_PROJECT/TASK name the task, CLEARML_LOG_MODEL overrides the ownership default,
    a bad value fails naming the variable, and CLEARML_OFFLINE_MODE switches the SDK offline."""

    def build(**env: str) -> ClearMLSink:
        return ClearMLSink.from_env(env, run_dir=tmp_path, run_name="r")

    default = build()
    assert (default.project, default.task_name, default.log_model) == (
        "HuggingFace Transformers",
        "Trainer",
        None,
    )
    named = build(CLEARML_PROJECT="p", CLEARML_TASK="t", CLEARML_LOG_MODEL="FALSE")
    assert (named.project, named.task_name, named.log_model) == ("p", "t", False)
    assert build(CLEARML_LOG_MODEL="1").log_model is True
    assert build(CLEARML_OFFLINE_MODE="yes").offline is True
    with pytest.raises(ConfigurationError, match="CLEARML_LOG_MODEL='sometimes'"):
        build(CLEARML_LOG_MODEL="sometimes")


@pytest.mark.parametrize(
    ("env", "conf", "available"),
    [
        ({}, False, False),
        ({"CLEARML_OFFLINE_MODE": "1"}, False, True),
        ({"CLEARML_API_ACCESS_KEY": "k"}, False, True),
        ({"CLEARML_CONFIG_FILE": "/etc/clearml.conf"}, False, True),
        ({}, True, True),
    ],
)
def test_all_picks_clearml_only_when_configured(
    env: dict[str, str], conf: bool, available: bool, tmp_path: Path
) -> None:
    """report_to="all" includes ClearML offline, with credentials or with a ClearML config
    file, never on defaults that would reach ClearML's hosted server."""
    if conf:
        (tmp_path / "clearml.conf").write_text("api {}\n")
    assert ClearMLSink.is_available({"HOME": str(tmp_path), **env}) is available


def test_report_to_clearml_builds_the_sink(tmp_path: Path) -> None:
    """report_to=["clearml"] builds the sink from the environment through the registry."""
    from trainbus.orchestrator.registry import available_integrations, build_sinks

    env = {"CLEARML_OFFLINE_MODE": "1", "CLEARML_TASK": "t", "HOME": str(tmp_path)}
    [(name, sink)] = build_sinks(["clearml"], env, run_dir=tmp_path, run_name="r")
    assert name == "clearml" and isinstance(sink, ClearMLSink) and sink.task_name == "t"
    assert "clearml" in available_integrations(env)
    assert "clearml" not in available_integrations({"HOME": str(tmp_path)})


def test_sdk_failures_become_retryable_or_permanent() -> None:
    """A full disk or an unreachable server is retried; missing or refused configuration and
    bad usage are not; an unexpected exception stays as it is."""
    from clearml.backend_api.session.defs import MissingConfigError
    from clearml.errors import UsageError

    cases: list[tuple[Exception, type[Exception]]] = [
        (OSError("disk full"), RetryableSinkError),
        (MissingConfigError(), PermanentSinkError),
        (UsageError("bad"), PermanentSinkError),
        (KeyError("bug"), KeyError),
    ]
    for raised, expected in cases:
        with pytest.raises(expected), _map_errors():
            raise raised
