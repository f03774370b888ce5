"""A full disk fails the run naming the file, marks it failed, and leaves no temporary files."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from trainbus.bus import _files
from trainbus.orchestrator import Orchestrator
from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


class DiskFull:
    """A test double of the file layer's write: new files get ``ENOSPC`` once armed, while
    overwriting bytes an existing file already holds still works, as on a really full disk."""

    def __init__(self) -> None:
        self.armed = False
        self.refused: list[str] = []
        self._write_all = _files._write_all

    def __call__(self, fd: int, data: bytes) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if self.armed and name.endswith(".tmp"):
            self.refused.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._write_all(fd, data)


class FillDiskAt(TrainerCallback):
    """Arms the double at the end of one update, just before that update's checkpoint."""

    def __init__(self, disk: DiskFull, step: int) -> None:
        self.disk, self.step = disk, step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.disk.armed = True


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_disk_full_at_a_checkpoint_marks_the_run_failed_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC writing trainer_state.json: an OSError naming it, run.json "failed", no .tmp left."""
    disk = DiskFull()
    monkeypatch.setattr(_files, "_write_all", disk)
    out = tmp_path / "out"
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(16),
        callbacks=[FillDiskAt(disk, 2)],
    )
    orchestrator = Orchestrator.for_trainer(trainer)
    with pytest.raises(OSError) as info:
        trainer.train(launcher=orchestrator)

    assert info.value.errno == errno.ENOSPC
    assert "No space left on device (writing " in str(info.value)
    assert str(info.value.filename).endswith("trainer_state.json")  # the target, not the .tmp
    assert disk.refused  # the double really refused a write
    record = json.loads((orchestrator.run_dir.path / "run.json").read_text())
    assert record["status"] == "failed"
    assert "No space left on device" in record["error"]
    leftovers = [p for p in out.rglob("*") if "tmp" in p.name or p.name.startswith(".checkpoint")]
    assert leftovers == []
    assert not (out / "checkpoint-2").exists()  # never half a checkpoint


def test_replace_file_overwrites_in_place_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk replace_file raises naming the target, unless in_place_when_full is set."""
    disk = DiskFull()
    monkeypatch.setattr(_files, "_write_all", disk)
    target = tmp_path / "run.json"
    target.write_bytes(b'{"status": "running", "padding": "......"}\n')
    disk.armed = True
    with pytest.raises(OSError, match=r"No space left on device \(writing .*run\.json\)"):
        _files.replace_file(target, b'{"status": "failed"}\n')
    _files.replace_file(target, b'{"status": "failed"}\n', in_place_when_full=True)
    assert target.read_bytes() == b'{"status": "failed"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
