"""What SwanLab's offline ``run-*.swanlab`` files recorded, read with the SDK's own reader.

SwanLab 0.10 ships no public reader of its run files; ``swanlab sync`` reads them with
``swanlab.sdk.internal.core_python.store.DataStoreReader`` and decodes each record with the
``swanlab.proto`` schema, and so does this helper. The config is read from the run's
``files/config.yaml``, which the file's ``save`` record names.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SwanLabRun"]


class SwanLabRun:
    """Every offline session of the SwanLab runs under ``log_dir`` (one per ``swanlab.init``)."""

    def __init__(self, log_dir: Path) -> None:
        store: Any = importlib.import_module("swanlab.sdk.internal.core_python.store")
        schema: Any = importlib.import_module("swanlab.proto.swanlab.record.v1.record_pb2")
        self.files = sorted(log_dir.glob("run-*/run-*.swanlab"))
        self.starts: list[Any] = []
        self.finishes: list[Any] = []
        self.scalars: list[tuple[str, int, float]] = []
        self.saves: list[Any] = []
        for path in self.files:
            reader = store.DataStoreReader()
            reader.open(path)
            try:
                while (payload := reader.scan()) is not None:
                    record = schema.Record()
                    record.ParseFromString(payload)
                    kind = record.WhichOneof("record_type")
                    if kind == "start":
                        self.starts.append(record.start)
                    elif kind == "finish":
                        self.finishes.append(record.finish)
                    elif kind == "scalar":
                        s = record.scalar
                        self.scalars.append((s.key, s.step, s.value.number))
                    elif kind == "save":
                        self.saves.append(record.save)
            finally:
                reader.close()

    @property
    def run_ids(self) -> set[str]:
        """The SwanLab run ids the sessions belong to (``swanlab sync`` merges equal ids)."""
        return {start.id for start in self.starts}

    def finish_states(self) -> list[str]:
        """Each session's end state by name (``RUN_STATE_FINISHED``, ``RUN_STATE_CRASHED``...)."""
        run_pb2: Any = importlib.import_module("swanlab.proto.swanlab.run.v1.run_pb2")
        return [run_pb2.RunState.Name(finish.state) for finish in self.finishes]

    def saved_files(self) -> set[str]:
        """The names of the files saved into the run with ``run.save`` (SwanLab's own config,
        metadata and requirements files left out)."""
        save_pb2: Any = importlib.import_module("swanlab.proto.swanlab.save.v1.save_pb2")
        custom = save_pb2.SaveType.Value("SAVE_TYPE_CUSTOM")
        return {save.name for save in self.saves if save.type == custom}

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every point of ``key``, in the order logged."""
        return [(step, value) for name, step, value in self.scalars if name == key]

    def metric_keys(self) -> set[str]:
        """Every metric key logged."""
        return {name for name, _, _ in self.scalars}

    def config(self) -> dict[str, Any]:
        """The run's config as SwanLab saved it (``{key: value}``), merged over sessions."""
        merged: dict[str, Any] = {}
        for path in self.files:
            config_file = path.parent / "files" / "config.yaml"
            if config_file.is_file():
                saved = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
                merged.update({key: entry["value"] for key, entry in saved.items()})
        return merged
