"""The ``trainbus`` command: train, show and plot end to end, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainbus.orchestrator.cli import main
from trainbus.orchestrator.rundir import find_run_dir

ROOT = Path(__file__).resolve().parents[2]

TINY = """
model = "trainbus.trainer.testing:TinyRegressor"
train_dataset = "trainbus.trainer.testing:RegressionDataset"
eval_dataset = "trainbus.trainer.testing:RegressionDataset"
sinks = ["examples.custom_sink:JsonLines"]

[eval_dataset_kwargs]
length = 16
seed = 1

[args]
output_dir = "{output_dir}"
max_steps = 12
per_device_train_batch_size = 8
logging_steps = 4
eval_strategy = "steps"
eval_steps = 6
save_strategy = "steps"
save_steps = 6
report_to = {report_to}
disable_tqdm = true
"""


def trainbus(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trainbus`` (the ``trainbus`` command) in a fresh interpreter."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environ.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "trainbus", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Path, output_dir: Path, report_to: str = '["tensorboard"]') -> Path:
    """A tiny run file pointing at ``output_dir``."""
    path.write_text(TINY.format(output_dir=output_dir, report_to=report_to))
    return path


def test_train_then_show_then_plot(tmp_path: Path) -> None:
    """``train`` on a tiny config writes a run that ``show`` summarises and ``plot`` draws."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", out)
    jsonl = tmp_path / "metrics.jsonl"
    trained = trainbus("train", str(config), env={"TRAINBUS_JSONL": str(jsonl)})
    assert trained.returncode == 0, trained.stderr
    assert f"directory  {out / 'trainbus'}" in trained.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [4, 8, 12]

    shown = trainbus("show", str(out), "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["global_step"] == 12
    assert summary["status"] == "completed"
    assert "eval_loss" in summary["best"]
    assert {s["name"]: s["behind"] for s in summary["sinks"]} == {"tensorboard": 0, "jsonlines": 0}
    text = trainbus("show", str(out))
    assert text.returncode == 0 and "up to date" in text.stdout

    png = tmp_path / "curves.png"
    plotted = trainbus("plot", str(out), "-o", str(png))
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, nothing on stdout, exactly one line on stderr containing ``needles``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('model = "trainbus.trainer.testing:TinyRegressor"\n[args\n', ["not valid TOML"]),
        (None, ["unknown integration 'tensorbored'", "'mlflow'"]),
        ('model = "no_such_pkg.models:tiny"\n', ["model", "no_such_pkg.models"]),
        ('model = "trainbus.trainer.testing:NoSuchFactory"\n', ["model", "NoSuchFactory"]),
        (
            'model = "trainbus.trainer.testing:TinyRegressor"\n[args]\nlearning_rat = 0.1\n',
            ["learning_rat"],
        ),
    ],
    ids=["malformed-toml", "unknown-report-to", "missing-module", "missing-function", "bad-arg"],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path,
    body: str | None,
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each kind of bad run file ends with exit code 2, one stderr line, and no output_dir."""
    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    if body is None:
        write_config(config, out, report_to='["tensorbored"]')
    else:
        args_table = "" if "[args]" in body else f'\n[args]\noutput_dir = "{out}"\n'
        config.write_text(body + args_table)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT), *sys.path])
    code = main(["--log-level", "WARNING", "train", str(config)])
    captured = capsys.readouterr()
    assert_one_line_error(
        subprocess.CompletedProcess([], code, captured.out, captured.err), *needles
    )
    assert not out.exists()
    assert not (tmp_path / "trainer_output").exists()


def test_unwritable_output_dir_is_one_line_and_nothing_written(tmp_path: Path) -> None:
    """An output_dir that cannot be created fails before training with exit code 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path / "run.toml", blocker / "out")
    result = trainbus("train", str(config))
    assert_one_line_error(result, "output_dir")
    assert blocker.read_text() == "not a directory"


def test_show_on_a_path_that_is_no_run(tmp_path: Path) -> None:
    """``show`` on a directory without a run says so in one line with exit code 2."""
    assert_one_line_error(trainbus("show", str(tmp_path)), "neither a trainbus run directory")


def test_usage_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command or a missing argument is one stderr line with exit code 2."""
    for argv in (["frobnicate"], ["plot"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        captured = capsys.readouterr()
        code = info.value.code if isinstance(info.value.code, int) else 1
        result = subprocess.CompletedProcess(argv, code, captured.out, captured.err)
        assert_one_line_error(result, "error:")


def test_demo_quick_runs_every_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``trainbus demo --quick`` evaluates, checkpoints, writes TensorBoard and the journal."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eval accuracy of the best model:" in printed
    assert f"trainbus show {out}" in printed
    assert sorted(p.name for p in out.glob("checkpoint-*"))
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    run = find_run_dir(out)
    assert run.journal_path.stat().st_size > 0
    assert run.read_record().status == "completed"


def test_dry_run_prints_each_integration_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train --dry-run`` checks the file, prints one line per integration (picked, or skipped
    with the reason) and exits 0 without training or creating ``output_dir``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", out, report_to='"all"')
    assert main(["--log-level", "WARNING", "train", str(config), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not out.exists()
    verdicts = {line.split()[0]: line for line in lines if " picked" in line or " skipped" in line}
    assert set(verdicts) >= {"tensorboard", "mlflow", "comet_ml", "wandb", "flyte", "swanlab"}
    assert verdicts["tensorboard"].split() == ["tensorboard", "picked"]
    assert "MLFLOW_TRACKING_URI" in verdicts["mlflow"]
    assert any(line.startswith("report_to    'all' -> [") for line in lines)


def test_dry_run_refuses_bad_input_like_a_run(tmp_path: Path) -> None:
    """A name that a run would refuse fails the dry run too, with the usual exit code 2."""
    config = write_config(tmp_path / "run.toml", tmp_path / "out", report_to='["tensorbored"]')
    assert main(["--log-level", "WARNING", "train", str(config), "--dry-run"]) == 2
    assert not (tmp_path / "out").exists()
