"""SwanLab sink in the SDK's real offline mode, read back from the run files with SwanLab's own
record reader, and compared with transformers' own ``SwanLabCallback`` on the same training."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from tests.support.hf_differential import run_script
from tests.support.swanlab_records import SwanLabRun
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact, Event, Log, Predict
from trainbus.sinks.swanlab import FRAMEWORK, SwanLabSink

pytest.importorskip("swanlab")

_VARIABLES = (
    "SWANLAB_API_KEY",
    "SWANLAB_PROJECT",
    "SWANLAB_MODE",
    "SWANLAB_LOG_DIR",
    "SWANLAB_RUN_ID",
    "SWANLAB_RESUME",
    "SWANLAB_LOG_MODEL",
    "SWANLAB_ROOT",
    "SWANLAB_SAVE_DIR",
)


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """SwanLab offline, with its home folder and working directory inside the test's own
    directory (the SDK reads ``.env`` and ``.swanlab/`` there); no run outlives the test."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    yield {"SWANLAB_MODE": "offline"}
    import swanlab

    if swanlab.has_run():
        swanlab.finish()


def _with_summary_and_predict(steps: int) -> list[Event]:
    """A scripted run plus HF's end-of-training Log and a Predict, before RunFinished."""
    events = scripted_run(steps, eval_every=10)
    finished = events.pop()
    common: dict[str, Any] = {"run_id": finished.run_id, "time": finished.time}
    summary = {"train_runtime": 12.5, "train_loss": 0.3, "total_flos": 1e9, "epoch": 2.0}
    return [
        *events,
        Log(seq=finished.seq, global_step=steps, logs=summary, **common),
        Predict(seq=finished.seq + 1, global_step=steps, metrics={"test_loss": 0.7}, **common),
        msgspec.structs.replace(finished, seq=finished.seq + 2),
    ]


async def test_offline_run_reads_back_with_swanlabs_reader(tmp_path: Path) -> None:
    """Through a real Bus: HF's keys at their global steps, single-value scalars under
    ``single_value/``, predictions one step past the last, the config with secrets masked and
    HF's FRAMEWORK marker, the experiment named after the run and finished."""
    run_dir = tmp_path / "run"
    env = {"SWANLAB_MODE": "offline", "SWANLAB_PROJECT": "trainbus-test"}
    sink = SwanLabSink.from_env(env, run_dir=run_dir, run_name="fallback-name")
    with anyio.fail_after(60):
        report = await deliver_through_bus(_with_summary_and_predict(20), [sink], run_dir)
    assert report["swanlab"].undelivered == 0
    run = SwanLabRun(run_dir / "swanlog")
    assert [(s.name, s.project) for s in run.starts] == [("tiny-run", "trainbus-test")]
    assert run.series("train/loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 21)
    ]
    assert run.series("train/global_step") == [(s, s) for s in range(1, 21)]
    assert run.series("eval/loss") == [
        (s, pytest.approx(eval_logs(s)["eval_loss"])) for s in (10, 20)
    ]
    assert run.series("single_value/train_runtime") == [(20, 12.5)]
    assert run.series("single_value/total_flos") == [(20, 1e9)]
    assert run.series("test/loss") == [(21, 0.7)]
    assert "train/train_runtime" not in run.metric_keys()
    config = run.config()
    assert config["FRAMEWORK"] == FRAMEWORK and config["hidden_size"] == 16
    assert config["learning_rate"] == 0.001 and config["hub_token"] == "***"
    assert run.finish_states() == ["RUN_STATE_FINISHED"]


async def test_restart_resumes_the_experiment_without_duplicate_points(tmp_path: Path) -> None:
    """A new sink on the same run directory continues the same SwanLab run id, and a batch
    delivered again (same process, then after a restart) logs no point twice."""
    events = scripted_run(12, eval_every=4)
    for upto in (14, len(events)):
        sink = SwanLabSink(run_dir=tmp_path, mode="offline")
        with anyio.fail_after(60):
            await sink.open()
            await sink.write(events[:upto])
            await sink.write(events[:upto])
            await sink.close()
    run = SwanLabRun(tmp_path / "swanlog")
    assert len(run.files) == 2 and len(run.run_ids) == 1
    assert [step for step, _ in run.series("train/loss")] == list(range(1, 13))
    assert [step for step, _ in run.series("eval/loss")] == [4, 8, 12]
    assert run.config()["learning_rate"] == 0.001
    # The first session closed without RunFinished: crashed; the second finished.
    assert run.finish_states() == ["RUN_STATE_CRASHED", "RUN_STATE_FINISHED"]


async def test_a_run_the_user_started_is_used_and_left_open(tmp_path: Path) -> None:
    """As in HF, an active run started by the user gets the metrics and is not finished, by
    RunFinished or by a later session of the same trainbus run; the sink stays in the process
    that holds the run (without one it would choose the sink process)."""
    import swanlab

    assert SwanLabSink(run_dir=tmp_path / "run", mode="offline").prefers_sink_process
    user_run = swanlab.init(project="mine", mode="offline", log_dir=str(tmp_path / "user"))
    events = scripted_run(3)
    for _ in range(2):
        sink = SwanLabSink(run_dir=tmp_path / "run", mode="offline")
        assert not sink.prefers_sink_process
        with anyio.fail_after(60):
            await sink.open()
            await sink.write(events)
            await sink.close()
        events = [msgspec.structs.replace(e, seq=e.seq + len(events)) for e in events]
    assert swanlab.has_run() and swanlab.get_run().id == user_run.id
    swanlab.finish()
    run = SwanLabRun(tmp_path / "user")
    assert [s for s, _ in run.series("train/loss")] == [1, 2, 3]
    assert run.finish_states() == ["RUN_STATE_FINISHED"]
    assert not (tmp_path / "run" / "swanlog").exists()


async def test_text_values_are_quarantined_and_the_rest_logged(tmp_path: Path) -> None:
    """A value SwanLab cannot chart is held back (named), the numbers of the same Log land."""
    events = scripted_run(2)
    events[1] = msgspec.structs.replace(events[1], logs={"loss": 0.5, "note": "hello"})
    sink = SwanLabSink(run_dir=tmp_path, mode="offline")
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    [held] = sink.take_quarantined()
    assert (held.seq, held.key) == (1, "train/note")
    assert SwanLabRun(tmp_path / "swanlog").series("train/loss")[0] == (1, 0.5)


async def test_log_model_saves_the_final_models_files(tmp_path: Path) -> None:
    """SWANLAB_LOG_MODEL=end asks for the final model and saves its files into the run (not
    the checkpoints); ``checkpoint`` saves those too."""
    out = tmp_path / "out"
    for name in ("checkpoint-2", "final"):
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"\x00" * 8)
        (out / name / "config.json").write_text("{}")
    events = scripted_run(2)
    finished = events.pop()
    for offset, (name, kind) in enumerate((("checkpoint-2", "checkpoint"), ("final", "model"))):
        events.append(
            Artifact(
                run_id=finished.run_id,
                seq=finished.seq + offset,
                time=finished.time,
                path=str(out / name),
                kind=kind,
                name=name,
            )
        )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 2))
    saved: dict[str, set[str]] = {}
    for value in ("end", "checkpoint"):
        run_dir = out / "trainbus" / value
        env = {"SWANLAB_MODE": "offline", "SWANLAB_LOG_MODEL": value}
        sink = SwanLabSink.from_env(env, run_dir=run_dir, run_name="r")
        assert sink.wants_final_model
        with anyio.fail_after(60):
            await sink.open()
            await sink.write(events)
            await sink.close()
        saved[value] = SwanLabRun(run_dir / "swanlog").saved_files()
    assert saved["end"] == {"final/model.safetensors", "final/config.json"}
    assert saved["checkpoint"] == saved["end"] | {
        "checkpoint-2/model.safetensors",
        "checkpoint-2/config.json",
    }


@pytest.mark.slow
def test_same_keys_steps_and_config_as_transformers_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train -> evaluate -> predict on transformers.Trainer with its SwanLabCallback and on
    ours: the same metric keys at the same steps, the same config keys (but HF's parameter
    count), and ours one SwanLab run across the three calls.

    transformers 5.24's callback cannot start a run with SwanLab >= 0.8 (``No active Run``), so
    the script starts one for it, as a user would; the callback then logs into it live.
    """
    runs: dict[str, SwanLabRun] = {}
    for flavour in ("transformers", "trainbus"):
        workdir = tmp_path / flavour
        monkeypatch.setenv("SWANLAB_LOG_DIR", str(workdir / "swanlog"))
        if flavour == "trainbus":
            monkeypatch.setenv("SWANLAB_PROJECT", "tiny")  # HF's variable, which 0.10 rejects
        run_script(
            "swanlab_offline", flavour, workdir, PRESTART=flavour == "transformers", PROJECT="tiny"
        )
        runs[flavour] = SwanLabRun(workdir / "swanlog")
    theirs, ours = runs["transformers"], runs["trainbus"]
    assert {(s.name, s.project) for s in ours.starts} == {("tiny-swan", "tiny")}
    assert len(ours.files) == 3 and len(ours.run_ids) == 1  # train, evaluate, predict
    assert ours.metric_keys() == theirs.metric_keys()
    for key in sorted(theirs.metric_keys()):
        assert [s for s, _ in ours.series(key)] == [s for s, _ in theirs.series(key)], key
    assert ours.series("test/loss") and ours.series("test/loss")[0][0] == 5
    assert set(theirs.config()) - set(ours.config()) == {"model_num_parameters"}


def test_environment_follows_hf(tmp_path: Path) -> None:
    """HF's variables reach the sink; SWANLAB_LOG_DIR defaults into the run directory."""
    env = {
        "SWANLAB_MODE": "cloud",
        "SWANLAB_API_KEY": "k",
        "SWANLAB_PROJECT": "p",
        "SWANLAB_RUN_ID": "abc",
        "SWANLAB_RESUME": "must",
        "SWANLAB_LOG_MODEL": "1",
    }
    sink = SwanLabSink.from_env(env, run_dir=tmp_path, run_name="r")
    assert (sink.mode, sink.project, sink.run_id, sink.resume) == ("online", "p", "abc", "must")
    assert sink.log_model == "end" and sink.log_dir == tmp_path / "swanlog"
    plain = SwanLabSink.from_env({"SWANLAB_MODE": "offline"}, run_dir=tmp_path, run_name="r")
    assert plain.log_model is False and not plain.wants_final_model


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no SwanLab API key"),
        ({"SWANLAB_MODE": "online"}, "no SwanLab API key"),
        ({"SWANLAB_MODE": "sideways"}, "SWANLAB_MODE='sideways'"),
        ({"SWANLAB_MODE": "offline", "SWANLAB_RESUME": "maybe"}, "SWANLAB_RESUME='maybe'"),
        ({"SWANLAB_MODE": "offline", "SWANLAB_LOG_MODEL": "often"}, "SWANLAB_LOG_MODEL='often'"),
    ],
)
def test_bad_settings_are_refused_before_training(
    env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cloud mode without credentials (which would prompt) and unknown values fail when the
    sink is built, naming the variable."""
    monkeypatch.delenv("SWANLAB_MODE")
    with pytest.raises(ConfigurationError, match=message):
        SwanLabSink.from_env(env, run_dir=tmp_path, run_name="r")


@pytest.mark.parametrize(
    ("env", "login", "available"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"SWANLAB_API_KEY": "k"}, False, True),
        ({"SWANLAB_MODE": "offline"}, False, True),
        ({"SWANLAB_MODE": "disabled", "SWANLAB_API_KEY": "k"}, False, False),
        ({"SWANLAB_MODE": "local"}, False, importlib.util.find_spec("swanboard") is not None),
    ],
)
def test_all_picks_swanlab_only_when_it_needs_no_prompt(
    env: dict[str, str], login: bool, available: bool, tmp_path: Path
) -> None:
    """report_to="all" includes SwanLab in offline mode, or in cloud mode with an API key in
    the environment or stored by ``swanlab login`` (``~/.swanlab/.netrc``)."""
    from trainbus.orchestrator.registry import available_integrations, build_sinks

    if login:
        netrc = tmp_path / "home" / ".swanlab" / ".netrc"
        netrc.parent.mkdir(parents=True)
        netrc.write_text("machine api.swanlab.cn login u password k\n")
    assert ("swanlab" in available_integrations(env)) is available
    [(name, sink)] = build_sinks(
        ["swanlab"], {"SWANLAB_MODE": "offline"}, run_dir=tmp_path, run_name="r"
    )
    assert name == "swanlab" and isinstance(sink, SwanLabSink)
