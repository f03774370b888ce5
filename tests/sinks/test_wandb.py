"""W&B sink in the SDK's real offline mode, read back from the run's transaction log."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil  # type: ignore[import-untyped]  # no stubs in the environment
import pytest
from structlog.testing import capture_logs

from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Artifact, Event, Log, Predict
from trainbus.orchestrator.registry import build_sinks
from trainbus.sinks._wandb_log import HEADER, TransactionLog, iter_records
from trainbus.sinks.wandb import WandbSink, _map_errors

pytest.importorskip("wandb")


def read_records(path: Path, *, crashed: bool = False) -> Iterator[Any]:
    """The protobuf records of a complete ``.wandb`` file, decoded with wandb's own schema;
    ``crashed``: of a file whose service died, which may end in a record written in part."""
    schema: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
    data = path.read_bytes()
    assert data.startswith(HEADER)
    tail = len(HEADER)
    for end, payload in iter_records(data):
        tail = end
        yield schema.Record.FromString(payload)
    if not crashed:
        assert data[tail:].strip(b"\x00") == b"", f"{path} ends in a partial record at {tail}"


def _items(items: Any) -> dict[str, Any]:
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items}


def wait_until_written(files: list[Path], timeout: float = 60.0) -> None:
    """Wait until each ``.wandb`` file ends with its run's exit record.

    ``wandb.finish()`` returns before W&B's service has written the file's last block (the
    sink waits for it, a run finished through the SDK directly does not): reading at once
    races the service. The timeout only guards against a hang; a file still incomplete then
    is read as it is, and the assertions say what it lacks.
    """
    logs = [TransactionLog(f) for f in files]
    give_up = time.monotonic() + timeout
    while not all(log.ended() for log in logs) and time.monotonic() < give_up:
        time.sleep(0.05)


class OfflineRun:
    """Everything the offline run directories of one W&B run recorded, once W&B's service has
    written them in full."""

    def __init__(self, root: Path, *, wait: bool = True, crashed: frozenset[Path] = frozenset()):
        """``wait=False`` reads the files as they are now (a test of the sink's own wait);
        ``crashed`` names files whose service was killed: read as far as they were written."""
        self.files = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))
        if wait:
            wait_until_written([f for f in self.files if f not in crashed])
        per_file = [list(read_records(f, crashed=f in crashed)) for f in self.files]
        self.complete = [bool(rs) and rs[-1].WhichOneof("record_type") == "exit" for rs in per_file]
        """Per file, whether it ends with its run's exit record (the service wrote it all)."""
        records = [r for rs in per_file for r in rs]
        by_type: dict[str, list[Any]] = {}
        for record in records:
            by_type.setdefault(record.WhichOneof("record_type") or "", []).append(record)
        self.runs = [r.run for r in by_type.get("run", [])]
        self.config: dict[str, Any] = {}  # from the run records and later config updates
        for record in records:
            if record.HasField("run"):
                self.config.update(_items(record.run.config.update))
            elif record.HasField("config"):
                self.config.update(_items(record.config.update))
        self.history = [_items(r.history.item) for r in by_type.get("history", [])]
        self.summary: dict[str, Any] = {}
        for record in by_type.get("summary", []):
            self.summary.update(_items(record.summary.update))
        self.metrics = [r.metric for r in by_type.get("metric", [])]
        self.artifacts = [r.artifact for r in by_type.get("artifact", [])]
        self.exits = [r.exit.exit_code for r in by_type.get("exit", [])]

    def series(self, key: str) -> list[tuple[int, Any]]:
        """(train/global_step, value) of every history row holding ``key``."""
        return [(row["train/global_step"], row[key]) for row in self.history if key in row]


OFFLINE_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_X_DISABLE_STATS": "true",
    "WANDB_X_DISABLE_MACHINE_INFO": "true",
    "WANDB_PROJECT": "trainbus-test",
}
"""W&B offline, quiet, and reading nothing of the machine or the repository."""


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The SDK in offline mode, quiet, without network, git or system probes; the W&B service
    and every process it started are stopped afterwards."""
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    env = dict(OFFLINE_ENV)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield env
    finally:
        import wandb

        wandb.teardown()
        cores = [p for p in psutil.Process().children(recursive=True) if "wandb" in p.name()]
        for process in cores:  # teardown waits for its service; this only guards against leaks
            process.kill()
        assert not cores, f"W&B processes outlived teardown: {cores}"


def _events_with_summary_scalars(steps: int, checkpoint: Path) -> list[Event]:
    """A scripted run plus HF's end-of-training Log (single-value scalars) before RunFinished."""
    events = scripted_run(steps, eval_every=10, checkpoint=checkpoint)
    finished = events.pop()
    last = Log(
        run_id=finished.run_id,
        seq=finished.seq,
        time=finished.time,
        global_step=steps,
        logs={"train_runtime": 12.5, "train_loss": 0.3, "total_flos": 1e9, "epoch": 2.0},
    )
    return [*events, last, msgspec.structs.replace(finished, seq=finished.seq + 1)]


async def test_offline_run_records_every_metric_at_its_step(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """Through a real Bus in offline mode, the transaction log holds every metric once under
    HF's prefixes at its global step (the step metric of all others), the single-value scalars
    in the summary only, the config with secrets masked, the checkpoint artifact and exit 0."""
    checkpoint = tmp_path / "checkpoint-20"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"\x02" * 256)
    run_dir = tmp_path / "trainbus" / "run"  # the layout: the checkpoint is in its output_dir
    env = {**offline, "WANDB_LOG_MODEL": "checkpoint"}
    sink = WandbSink.from_env(env, run_dir=run_dir, run_name="fallback-name")
    with anyio.fail_after(120):
        report = await deliver_through_bus(
            _events_with_summary_scalars(20, checkpoint), [sink], run_dir
        )
    assert report["wandb"].undelivered == 0
    run = OfflineRun(run_dir)
    assert len(run.files) == 1
    [info] = run.runs
    assert (info.run_id, info.project, info.display_name) == (
        sink.run_id,
        "trainbus-test",
        "tiny-run",
    )
    config = _items(info.config.update)
    assert config["learning_rate"] == 0.001 and config["hidden_size"] == 16
    assert config["hub_token"] == "***"
    assert run.series("train/loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 21)
    ]
    assert run.series("eval/accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20)
    ]
    # epoch rides on every train and eval Log, and on the final one
    assert sorted(s for s, _ in run.series("train/epoch")) == sorted([*range(1, 21), 10, 20, 20])
    assert not [key for row in run.history for key in row if "runtime" in key and key[0] != "_"]
    assert run.summary["train_runtime"] == 12.5 and run.summary["total_flos"] == 1e9
    star = [m for m in run.metrics if m.glob_name == "*"]
    assert star and star[0].step_metric == "train/global_step" and star[0].options.step_sync
    [artifact] = run.artifacts  # named after the run's own name, as transformers names it
    assert artifact.name == "model-tiny-run" and artifact.type == "model"
    assert {"checkpoint_global_step_20", "epoch_0.0"} <= set(artifact.aliases)  # scripted: epoch 0
    metadata = json.loads(artifact.metadata)
    assert metadata["train/loss"] == pytest.approx(train_logs(20)["loss"])
    assert "final_model" not in metadata and not [k for k in metadata if k.startswith("_")]
    assert run.exits == [0]
    saved = json.loads((run_dir / "wandb.json").read_text())
    assert saved["wandb_run_id"] == sink.run_id


async def test_restart_resumes_the_run_without_duplicate_points(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """A new sink on the same run directory resumes the same W&B run id, and a batch delivered
    again (same process or after the restart) logs no point twice."""
    events = scripted_run(12, eval_every=4)
    ids = []
    with capture_logs() as logs:
        for upto in (14, len(events)):
            sink = WandbSink.from_env(offline, run_dir=tmp_path, run_name="r")
            with anyio.fail_after(120):
                await sink.open()
                await sink.write(events[:upto])
                await sink.write(events[:upto])
                await sink.close()
            ids.append(sink.run_id)
    assert ids[0] == ids[1]
    # Each part on disk in full when its sink returned: a missing point below is then the
    # sink's, not a read racing the service's last write.
    assert not [e for e in logs if "still incomplete" in e["event"]]
    run = OfflineRun(tmp_path, wait=False)  # as the sinks left it
    assert run.complete == [True, True]
    assert {r.run_id for r in run.runs} == {ids[0]}
    assert [s for s, _ in run.series("train/loss")] == list(range(1, 13))
    assert [s for s, _ in run.series("eval/loss")] == [4, 8, 12]
    assert run.exits == [1, 0]  # the first sink closed without RunFinished: marked failed


async def test_close_returns_once_the_offline_file_is_complete(
    offline: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() returns only when the run's offline file holds every point and the exit record,
    even when the W&B service writes it late: here the service is frozen from the moment
    finish() asks it to close the run until the sink first looks at the file."""
    connection: Any = importlib.import_module("wandb.sdk.lib.service.service_connection")
    inform_finish = connection.ServiceConnection.inform_finish
    frozen: list[Any] = []

    def freeze_then_inform_finish(self: Any, run_id: str) -> None:
        frozen.extend(p for p in psutil.Process().children() if p.name() == "wandb-core")
        for process in frozen:
            process.suspend()
        inform_finish(self, run_id)

    def thaw() -> None:
        while frozen:
            frozen.pop().resume()

    ended = TransactionLog.ended

    def thaw_then_check(self: TransactionLog) -> bool:
        thaw()
        return ended(self)

    monkeypatch.setattr(connection.ServiceConnection, "inform_finish", freeze_then_inform_finish)
    monkeypatch.setattr(TransactionLog, "ended", thaw_then_check)
    events = scripted_run(6, eval_every=3)
    sink = WandbSink.from_env(offline, run_dir=tmp_path, run_name="r")
    try:
        with anyio.fail_after(120):
            await sink.open()
            await sink.write(events[:-1])
            await sink.close()
        run = OfflineRun(tmp_path, wait=False)  # read before the service may run again
    finally:
        thaw()
    assert [s for s, _ in run.series("train/loss")] == list(range(1, 7))
    assert run.exits == [1]


def test_environment_follows_hf(tmp_path: Path) -> None:
    """WANDB_LOG_MODEL takes end/checkpoint/false (anything else warns and logs no model) and
    asks for the final model; WANDB_WATCH asks for gradient and/or parameter histograms (an
    unknown value warns); WANDB_DISABLED refuses the sink."""

    def build(**env: str) -> WandbSink:
        env = {"WANDB_MODE": "offline", **env}
        return WandbSink.from_env(env, run_dir=tmp_path, run_name="r")

    assert build().project == "huggingface" and build().log_model is False
    assert not build().wants_final_model and build().wants_histograms == frozenset()
    assert build(WANDB_LOG_MODEL="end").log_model == "end"
    assert build(WANDB_LOG_MODEL="end").wants_final_model
    assert build(WANDB_LOG_MODEL="Checkpoint").log_model == "checkpoint"
    assert build(WANDB_LOG_MODEL="checkpoint").wants_final_model
    assert build(WANDB_WATCH="gradients").wants_histograms == {"gradients"}
    assert build(WANDB_WATCH="parameters").wants_histograms == {"parameters"}
    assert build(WANDB_WATCH="all").wants_histograms == {"gradients", "parameters"}
    with capture_logs() as logs:
        assert build(WANDB_LOG_MODEL="true").log_model is False
        assert build(WANDB_WATCH="weights").wants_histograms == frozenset()
    messages = " ".join(entry["event"] for entry in logs)
    assert "WANDB_LOG_MODEL must be" in messages and "WANDB_WATCH must be" in messages
    with pytest.raises(ConfigurationError, match="WANDB_DISABLED is set"):
        build(WANDB_DISABLED="true")
    with pytest.raises(ConfigurationError, match="WANDB_MODE must be one of"):
        build(WANDB_MODE="sometimes")
    assert build(WANDB_MODE="dryrun").mode == "offline"


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home without W&B credentials or settings; returns it."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_CONFIG_DIR", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_online_without_credentials_fails_before_training(
    no_credentials: Path, tmp_path: Path
) -> None:
    """Naming wandb online with no key anywhere is one configuration error at sink build time
    (the CLI's exit 2) that says how to log in or go offline; a key, a .netrc entry from
    'wandb login' or offline mode are each enough."""
    with pytest.raises(ConfigurationError) as refused:
        build_sinks(["wandb"], {}, run_dir=tmp_path, run_name="r")
    message = str(refused.value)
    assert "WANDB_API_KEY" in message and "wandb login" in message
    assert "WANDB_MODE=offline" in message and "\n" not in message
    assert WandbSink.from_env({"WANDB_API_KEY": "k" * 40}, run_dir=tmp_path, run_name="r")
    assert WandbSink.from_env({"WANDB_MODE": "offline"}, run_dir=tmp_path, run_name="r")
    netrc = no_credentials / ".netrc"
    netrc.write_text(f"machine {_default_host()}\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    assert WandbSink.from_env({}, run_dir=tmp_path, run_name="r").mode is None
    assert WandbSink.is_available({})


def test_offline_in_the_settings_file_needs_no_login(no_credentials: Path, tmp_path: Path) -> None:
    """'wandb offline' (mode in W&B's settings file) counts as offline, as the SDK reads it."""
    settings = no_credentials / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nmode = offline\n")
    assert WandbSink.is_available({})
    assert WandbSink.from_env({}, run_dir=tmp_path, run_name="r").mode is None


def _default_host() -> str:
    """The server the SDK logs in to by default (the host part of its base URL)."""
    settings: Any = importlib.import_module("wandb.sdk.wandb_settings")
    return str(settings.Settings().base_url).split("://", 1)[-1].rstrip("/")


async def test_a_refused_run_is_one_refusal_not_one_per_point(
    no_credentials: Path, tmp_path: Path
) -> None:
    """When W&B refuses to start the run (here: a malformed API key), the batch is quarantined
    after one attempt, each of its points named with the reason, instead of being halved down
    to single points with a refused start for each."""
    sink = WandbSink(run_dir=tmp_path, mode="online")
    events = scripted_run(8, eval_every=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_API_KEY", "short")
        with anyio.fail_after(60):
            await sink.open()
            with pytest.raises(PermanentSinkError) as refused:
                await sink.write(events)
    assert sink.split(events, refused.value) == ()
    assert sink.split(events, PermanentSinkError("a bad point")) != ()
    assert "refused" in str(refused.value) and not (tmp_path / "wandb").exists()


async def test_predict_metrics_go_out_under_test_without_a_step(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """predict()'s metrics are logged as transformers logs them: under test/, in a row of their
    own, at the run's last global step."""
    events = scripted_run(4, eval_every=4)
    finished = events.pop()
    metrics = {"test_loss": 0.25, "test_runtime": 0.5, "test_samples_per_second": 16.0}
    events.append(
        Predict(run_id="run-1", seq=finished.seq, time=0.0, global_step=4, metrics=metrics)
    )
    events.append(msgspec.structs.replace(finished, seq=finished.seq + 1))
    sink = WandbSink.from_env(offline, run_dir=tmp_path, run_name="r")
    with anyio.fail_after(120):
        report = await deliver_through_bus(events, [sink], tmp_path)
    assert report["wandb"].undelivered == 0
    run = OfflineRun(tmp_path)
    [row] = [row for row in run.history if "test/loss" in row]
    assert row["test/loss"] == 0.25 and row["test/samples_per_second"] == 16.0
    assert row["train/global_step"] == 4
    assert run.summary["test/loss"] == 0.25


def test_sdk_failures_become_retryable_or_permanent() -> None:
    """An unreachable server is retried; refused credentials and bad usage are not; an
    unexpected exception is left alone for the runtime to treat as a bug."""
    import wandb

    cases: list[tuple[Exception, type[Exception]]] = [
        (wandb.errors.CommError("connection refused"), RetryableSinkError),
        (wandb.errors.AuthenticationError("bad key"), PermanentSinkError),
        (wandb.errors.UsageError("no API key configured"), PermanentSinkError),
        (OSError("disk full"), RetryableSinkError),
        (KeyError("bug"), KeyError),
    ]
    for raised, expected in cases:
        with pytest.raises(expected), _map_errors(wandb):
            raise raised


@pytest.mark.parametrize(
    ("env", "available"),
    [
        ({}, False),
        ({"WANDB_MODE": "offline"}, True),
        ({"WANDB_API_KEY": "k" * 40}, True),
        ({"WANDB_API_KEY": "k" * 40, "WANDB_DISABLED": "true"}, False),
        ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}, False),
    ],
)
def test_all_picks_wandb_only_when_it_needs_no_login(env: dict[str, str], available: bool) -> None:
    """report_to="all" includes W&B only with an API key or in offline mode, never disabled."""
    assert WandbSink.is_available(env) is available


def test_artifact_events_follow_log_model(tmp_path: Path) -> None:
    """ "end" takes only the final model, "checkpoint" checkpoints too, false nothing."""
    model = Artifact(run_id="r", seq=1, time=0.0, global_step=3, path="m", kind="model")
    ckpt = msgspec.structs.replace(model, kind="checkpoint")
    wanted = {
        mode: [WandbSink(run_dir=tmp_path, log_model=mode)._wants(e) for e in (model, ckpt)]
        for mode in ("end", "checkpoint", False)
    }
    assert wanted == {"end": [True, False], "checkpoint": [True, True], False: [False, False]}


async def test_a_run_the_user_started_is_used_and_the_sink_stays_with_it(
    offline: dict[str, str], tmp_path: Path
) -> None:
    """As in HF, a run started with ``wandb.init`` before training gets the metrics and is left
    open; it lives in this process, so the sink does not choose the sink process (which it does
    without a user's run)."""
    import wandb

    before = WandbSink.from_env(offline, run_dir=tmp_path / "before", run_name="r")
    assert before.prefers_sink_process
    user_run = wandb.init(dir=str(tmp_path / "user"), project="mine")
    try:
        sink = WandbSink.from_env(offline, run_dir=tmp_path / "run", run_name="r")
        assert not sink.prefers_sink_process
        with anyio.fail_after(120):
            report = await deliver_through_bus(scripted_run(3), [sink], tmp_path / "run")
        assert report["wandb"].undelivered == 0
        assert wandb.run is user_run and sink.run_id == user_run.id
    finally:
        user_run.finish()
    run = OfflineRun(tmp_path / "user")
    assert [step for step, _ in run.series("train/loss")] == [1, 2, 3]
    assert run.exits == [0]
