"""What users install and import: one top-level name, ``trainbus``, that nothing shadows."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = ("bus", "trainer", "sinks", "orchestrator")

_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs"
)


def _clean_copy(destination: Path) -> Path:
    """The repository's tracked files (symlinks kept as links), without any build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): copy the sources
        shutil.copytree(ROOT, destination, symlinks=True, ignore=_NOT_SOURCES)
        return destination
    for name in listed.stdout.decode().split("\0"):
        if not name:
            continue
        source, target = ROOT / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        elif source.is_file():
            shutil.copy2(source, target)
    return destination


@pytest.mark.slow
def test_the_wheel_installs_only_trainbus_at_the_top_level(tmp_path: Path) -> None:
    """A wheel built from a clean copy holds ``trainbus`` (four layers inside) and its dist-info."""
    source = _clean_copy(tmp_path / "source")
    built = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(tmp_path / "dist"), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("trainbus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    top_level = {name.split("/", 1)[0] for name in names}
    (dist_info,) = [entry for entry in top_level if entry.endswith(".dist-info")]
    assert top_level == {"trainbus", dist_info}
    for layer in LAYERS:
        assert f"trainbus/{layer}/__init__.py" in names, f"trainbus.{layer} is missing"
        assert f"trainbus/{layer}/py.typed" in names
    assert "trainbus/trainer/_loop.py" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "trainbus = trainbus.orchestrator.cli:main" in entry_points


_USER_SCRIPT = """\
import json
import sys

import bus
import sinks
import trainer

from trainbus import Trainer, TrainingArguments
from trainbus.trainer.testing import RegressionDataset, TinyRegressor

args = TrainingArguments(
    output_dir="out", max_steps=4, per_device_train_batch_size=8, logging_steps=2,
    report_to=["tensorboard"], disable_tqdm=True, seed=0,
)
result = Trainer(model=TinyRegressor(), args=args, train_dataset=RegressionDataset()).train()
json.dump(
    {"steps": result.global_step, "mine": [trainer.MINE, bus.MINE, sinks.MINE]}, sys.stdout
)
"""


def test_a_users_own_trainer_bus_and_sinks_modules_break_nothing(tmp_path: Path) -> None:
    """Training runs from a directory with its own ``trainer.py``, ``bus.py`` and ``sinks.py``."""
    for name in ("trainer", "bus", "sinks"):
        (tmp_path / f"{name}.py").write_text(f"MINE = {name!r}\n")
    (tmp_path / "train.py").write_text(_USER_SCRIPT)
    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    last_line = done.stdout.strip().splitlines()[-1]
    assert last_line == '{"steps": 4, "mine": ["trainer", "bus", "sinks"]}'
    assert list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*")), "no TensorBoard file"


def test_the_facade_exports_what_transformers_users_import() -> None:
    """``from trainbus import ...`` gives the same objects as the layer packages do."""
    import trainbus
    from trainbus import bus, trainer

    for name in (
        "Trainer",
        "TrainingArguments",
        "TrainerCallback",
        "TrainerState",
        "TrainerControl",
        "EarlyStoppingCallback",
    ):
        assert getattr(trainbus, name) is getattr(trainer, name)
    assert trainbus.Bus is bus.Bus
    assert trainbus.Sink is bus.Sink


def test_importing_trainbus_loads_no_torch() -> None:
    """``import trainbus`` is lazy: the bus layer stays usable without loading torch."""
    code = "import sys, trainbus, trainbus.bus; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- one extra per integration ----------------------------------------------------------------


def _extras() -> dict[str, list[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def _table_rows(text: str, heading: str) -> list[str]:
    """The body rows of the first Markdown table after ``heading``."""
    lines = f"\n{text}".split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_every_integration_has_an_extra_and_all_installs_every_one() -> None:
    """Each ``report_to`` name's extra exists in pyproject, and ``trainbus[all]`` names them all."""
    from trainbus.orchestrator.registry import EXTRAS, INTEGRATIONS

    extras = _extras()
    assert set(EXTRAS) == set(INTEGRATIONS)
    for name, extra in EXTRAS.items():
        assert extras.get(extra), f"{name}: pyproject has no extra {extra!r}"
    (all_line,) = extras["all"]
    listed = all_line.removeprefix("trainbus[").removesuffix("]").split(",")
    assert sorted(listed) == sorted(set(EXTRAS.values()))


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "comet_ml", "wandb", "azure_ml",
                                  "codecarbon", "clearml", "dagshub", "flyte", "dvclive",
                                  "swanlab"])  # fmt: skip
def test_a_missing_sdk_error_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With its SDK not installed, naming the integration is one error that says
    ``pip install 'trainbus[<extra>]'``, and ``"all"`` skips it with the same fix."""
    import importlib.util

    from trainbus.bus._errors import ConfigurationError
    from trainbus.orchestrator import registry

    assert registry.INTEGRATIONS[name] is not None, f"{name} has no sink"
    sdk = registry.load_sink_class(name).sdk_module
    if sdk is None:
        pytest.skip(f"{name}'s sink needs no SDK (it writes or talks HTTP itself)")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        registry.importlib.util,
        "find_spec",
        lambda module, *a: None if module == sdk else real_find_spec(module, *a),
    )
    hint = f"pip install 'trainbus[{registry.EXTRAS[name]}]'"
    with pytest.raises(ConfigurationError) as info:
        registry.resolve_report_to([name], {})
    assert hint in str(info.value)
    (choice,) = [c for c in registry.explain_report_to("all", {}) if c.name == name]
    assert not choice.picked
    if name not in registry._EXPLICIT_ONLY:  # "all" never considers those: it says so instead
        assert hint in choice.reason


def test_the_integrations_index_has_one_row_per_integration() -> None:
    """``docs/integrations/README.md`` lists every name with its extra, the sentence ``"all"``
    uses for it (the registry's ``ALL_NEEDS``) and a link to its page; each page that exists
    names the extra too."""
    from trainbus.orchestrator.registry import ALL_NEEDS, EXTRAS

    index = ROOT / "docs" / "integrations" / "README.md"
    rows = _table_rows(index.read_text(), "# Integrations")
    by_name = {row.split("|")[1].strip().strip("`"): row for row in rows}
    assert list(by_name) == list(EXTRAS)
    for name, row in by_name.items():
        assert f"`trainbus[{EXTRAS[name]}]`" in row, name
        assert ALL_NEEDS[name] in row.replace("`", ""), name
        assert f"]({name}.md)" in row, name


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "comet_ml", "wandb", "azure_ml",
                                  "codecarbon", "clearml", "dagshub", "flyte", "dvclive",
                                  "swanlab"])  # fmt: skip
def test_each_integration_page_names_its_extra(name: str) -> None:
    """An integration's page tells users what to install."""
    from trainbus.orchestrator.registry import EXTRAS

    page = ROOT / "docs" / "integrations" / f"{name}.md"
    assert page.is_file(), f"{page.name} is missing"
    assert f"trainbus[{EXTRAS[name]}]" in page.read_text()


def test_the_readme_links_every_integration_page() -> None:
    """README's Sinks table has one row per integration, linking its page."""
    from trainbus.orchestrator.registry import INTEGRATIONS

    rows = _table_rows((ROOT / "README.md").read_text(), "## Sinks")
    first_cells = [row.split("|")[1].strip() for row in rows]
    for name in INTEGRATIONS:
        assert f"[`{name}`](docs/integrations/{name}.md)" in first_cells, name


def test_the_test_constraints_pin_every_requirement_within_its_range() -> None:
    """``scripts/constraints-test.txt`` (what ``setup.sh test`` installs with) pins one version of
    every package the test, lint and integration extras name, each inside pyproject's range, so
    a constraint can never hold back a raised requirement unnoticed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "scripts" / "constraints-test.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints-test.txt: {line!r} is not name==version"
            assert canonicalize_name(name) not in pins, f"constraints-test.txt: {name} twice"
            pins[canonicalize_name(name)] = version
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = [*project["dependencies"]]
    for requirements in _extras().values():
        named += [r for r in requirements if not r.startswith("trainbus[")]
    for text in named:
        requirement = Requirement(text)
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"constraints-test.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"constraints-test.txt pins {requirement.name}=={version}, outside {text!r}"
        )
