"""CodeCarbon sink with the real tracker, read back as CodeCarbon writes ``emissions.csv``, and
compared with transformers' own ``CodeCarbonCallback`` on the same training."""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.hf_differential import run_script
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Event, RunFinished, RunStarted, TrainBegin, TrainEnd
from trainbus.sinks.codecarbon import CodeCarbonSink

pytest.importorskip("codecarbon")
pd = pytest.importorskip("pandas")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CodeCarbon's config files are looked up in an empty home and working directory, and its
    web lookups (country, cloud) end at a closed port on 127.0.0.1 instead of the internet."""
    for name in ("CODECARBON_COUNTRY_ISO_CODE", "CODECARBON_OUTPUT_DIR", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("CODECARBON_LOG_LEVEL", "error")


def _columns() -> list[str]:
    """The columns CodeCarbon's file output writes: the fields of its ``EmissionsData``."""
    module: Any = importlib.import_module("codecarbon.output_methods.emissions_data")
    return [field.name for field in dataclasses.fields(module.EmissionsData)]


def _rows(directory: Path) -> Any:
    return pd.read_csv(directory / "emissions.csv")


def _events(output_dir: Path, *, train: bool, now: float) -> list[Event]:
    kinds: list[tuple[type[Any], dict[str, Any]]] = [(RunStarted, {"output_dir": str(output_dir)})]
    if train:
        kinds += [(TrainBegin, {}), (TrainEnd, {})]
    kinds.append((RunFinished, {}))
    return [
        kind(run_id="r", seq=seq, time=now, **fields) for seq, (kind, fields) in enumerate(kinds)
    ]


@pytest.mark.slow
def test_one_row_per_training_like_transformers_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train() then evaluate() on transformers.Trainer with its CodeCarbonCallback and on ours
    write one emissions.csv row each, in output_dir, with the same columns; ours, with a
    country configured, is measured offline and its duration lies within train()."""
    monkeypatch.setenv("CODECARBON_COUNTRY_ISO_CODE", "FRA")
    rows: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for flavour in ("transformers", "trainbus"):
        result = run_script("codecarbon_train", flavour, tmp_path / flavour)
        assert "emissions.csv" in result["files"]
        rows[flavour] = _rows(tmp_path / flavour / "out")
        seconds[flavour] = result["train_seconds"]
    theirs, ours = rows["transformers"], rows["trainbus"]
    assert list(ours.columns) == list(theirs.columns) == _columns()
    assert len(ours) == len(theirs) == 1
    [row] = ours.to_dict("records")
    assert 0 < row["duration"] < seconds["trainbus"]
    assert row["energy_consumed"] > 0 and row["emissions"] > 0
    assert row["country_iso_code"] == "FRA"


async def test_evaluate_alone_measures_nothing(tmp_path: Path) -> None:
    """A run without TrainBegin (evaluate() or predict() alone) writes no row, as in HF."""
    sink = CodeCarbonSink(run_dir=tmp_path / "run")
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(_events(tmp_path, train=False, now=time.time()))
        await sink.close()
    assert not (tmp_path / "emissions.csv").exists()


async def test_failed_run_still_gets_its_row_and_replays_add_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ends without TrainEnd is stopped at close and gets its row; delivering the
    same events again (a replay after a restart) adds no second row."""
    monkeypatch.setenv("CODECARBON_COUNTRY_ISO_CODE", "FRA")
    events = _events(tmp_path, train=True, now=time.time())[:2]  # RunStarted, TrainBegin
    for _ in range(2):
        sink = CodeCarbonSink(run_dir=tmp_path / "run")
        with anyio.fail_after(60):
            await sink.open()
            await sink.write(events)
            await sink.close()
    assert len(_rows(tmp_path)) == 1


async def test_old_train_begin_is_a_replay_not_measured(tmp_path: Path) -> None:
    """A TrainBegin delivered long after it happened (trainbus sync) starts no tracker."""
    sink = CodeCarbonSink(run_dir=tmp_path / "run", max_start_delay=5.0)
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(_events(tmp_path, train=True, now=time.time() - 60))
        await sink.close()
    assert not (tmp_path / "emissions.csv").exists()


def test_only_local_rank_zero_measures(tmp_path: Path) -> None:
    """One tracker per machine, as HF's local-process-zero rule: other local ranks take no
    events; every world rank's local zero measures its own machine."""
    from trainbus.orchestrator.registry import available_integrations, build_sinks

    [(_, zero)] = build_sinks(["codecarbon"], {}, run_dir=tmp_path, run_name="r", world_rank=3)
    [(_, other)] = build_sinks(["codecarbon"], {"LOCAL_RANK": "1"}, run_dir=tmp_path, run_name="r")
    event = _events(tmp_path, train=True, now=time.time())[1]
    assert isinstance(zero, CodeCarbonSink) and zero.accepts(event)
    assert isinstance(other, CodeCarbonSink) and not other.accepts(event)
    assert "codecarbon" in available_integrations({})


def test_bad_start_delay_is_refused(tmp_path: Path) -> None:
    """max_start_delay must be positive."""
    with pytest.raises(ConfigurationError, match="max_start_delay"):
        CodeCarbonSink(run_dir=tmp_path, max_start_delay=0)
