"""The one rule for paths that come from run data: resolved, then confined to a root, or refused.

A run directory is data: it gets copied between machines and shared, and ``trainbus sync`` reads
it back. A path named inside it (an ``Artifact`` event's checkpoint, a ``log_dir`` in a sink's
state file, a metric name that becomes a file name) must never lead a sink to read or write
outside the place the run owns. The place is the run's ``output_dir`` when the run directory sits
in the standard layout (``<output_dir>/trainbus/<run>``), else the run directory itself.

Paths are resolved first (``..`` collapsed, symbolic links followed), so neither ``../`` nor a
link placed inside the root can lead out of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from trainbus.bus._errors import ConfigurationError

__all__ = ["confine", "confined_files", "output_root", "safe_relative_name"]

RUNS_FOLDER: Final = "trainbus"
"""The folder of ``output_dir`` that holds the run directories."""


def output_root(run_dir: Path) -> Path:
    """The directory a run's data may name: ``output_dir`` for ``<output_dir>/trainbus/<run>``,
    else ``run_dir`` itself (resolved)."""
    resolved = run_dir.resolve()
    return resolved.parent.parent if resolved.parent.name == RUNS_FOLDER else resolved


def confine(path: str | Path, root: Path, *, what: str) -> Path:
    """``path`` resolved, when it lies inside ``root``; otherwise a ``ConfigurationError``.

    Args:
        path: the path as the data wrote it (relative ones resolve against the working directory,
            as the process that wrote them did).
        root: the directory the path must stay in.
        what: names the field the path came from, for the error.
    """
    resolved = Path(path).resolve()
    base = root.resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigurationError(
            f"{what} {str(path)!r} lies outside {str(base)!r}; paths read from a run directory "
            "must stay inside the run's output directory, so it is refused"
        )
    return resolved


def confined_files(path: str | Path, root: Path, *, what: str) -> list[Path]:
    """The files an artifact path stands for (itself, or every file under a directory), each
    confined to ``root``: a link inside a checkpoint directory cannot smuggle a file in."""
    source = confine(path, root, what=what)
    if not source.is_dir():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for file in files:
        confine(file, root, what=what)
    return files


def safe_relative_name(name: str, *, what: str) -> str:
    """``name`` when it can be used as a relative path below a directory (``eval/loss`` can);
    a ``ConfigurationError`` when it could climb out of it or be absolute (``../x``, ``/x``)."""
    parts = name.replace("\\", "/").split("/")
    if not name or "\0" in name or any(part in ("", ".", "..") for part in parts):
        raise ConfigurationError(
            f"{what} {name!r} cannot be used in a file name (empty, absolute, or with '.' or "
            "'..' segments), so it is refused"
        )
    return name
