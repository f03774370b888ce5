"""The chaos harness: a real training run under random faults, then ``trainbus sync``, then a
point-by-point comparison of the journal with what every destination holds.

One run, reproducible from its seed::

    plan = make_plan(seed=7, steps=200)           # which faults, at which steps, how it ends
    outcome = run_plan(plan, workdir, mlflow_url)  # train, inject, kill or finish, sync, compare
    outcome.lost, outcome.duplicated, outcome.stalled_steps

The training is the real ``trainbus train`` CLI on the tiny regression model, in its own process,
reporting to MLflow (a real server, behind :class:`~tests.support.fault_proxy.FaultProxy`),
TensorBoard and a user sink (``examples.custom_sink:JsonLines``). The process prints each step as
it ends (:mod:`tests.support.step_ticker`); the harness reads those lines and injects each fault,
or sends SIGKILL or SIGTERM, when its step has ended, so a seed always means the same schedule.

After the process is gone, ``trainbus sync`` runs against the server directly. Then every
numeric point of every journal ``Log`` event (key and step) is looked up in MLflow's own metric
history, in TensorBoard's scalars (read with TensorBoard's ``EventAccumulator``, orphan purging
off so a rewritten step counts twice) and in the user sink's lines: a point missing is *lost*, a
point found more than once is *duplicated*. A *stalled step* is a training step whose end came
more than ``stall_s`` after the previous one's (``StepEnd`` times in the journal): every fault
lasts longer than that, so a step that waited on one shows.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal

import httpx

from tests.support.fault_proxy import FaultProxy
from tests.support.step_ticker import PREFIX
from trainbus.bus import JournalReader, Log, StepEnd
from trainbus.orchestrator.rundir import RunDir, find_run_dir
from trainbus.sinks._rewrite import numeric_items, rewrite_logs, sanitize_key

__all__ = [
    "END_KINDS",
    "FAULT_KINDS",
    "ChaosOutcome",
    "ChaosPlan",
    "End",
    "Fault",
    "compare_points",
    "make_plan",
    "run_plan",
    "total",
]

ROOT: Final = Path(__file__).resolve().parents[2]
FAULT_KINDS: Final = ("outage", "5xx", "429", "latency")
END_KINDS: Final = ("complete", "sigkill", "sigterm")
USER_SINK: Final = "examples.custom_sink:JsonLines"
"""The user sink; ``trainbus sync`` rebuilds it only when named (reading a run executes nothing)."""
FINAL_STATUS: Final = {
    "complete": ("completed", "FINISHED"),
    "sigkill": ("killed", "KILLED"),  # sync closes a run whose process died
    "sigterm": ("killed", "KILLED"),  # graceful stop marks it itself
}
"""``run.json`` and MLflow status after training and ``trainbus sync``, by how the run ended."""
End = Literal["complete", "sigkill", "sigterm"]
Point = tuple[str, int]

CONFIG: Final = """
model = "trainbus.trainer.testing:TinyRegressor"
train_dataset = "trainbus.trainer.testing:RegressionDataset"
sinks = ["examples.custom_sink:JsonLines"]
callbacks = ["tests.support.step_ticker:StepTicker"]

[args]
output_dir = "{output_dir}"
max_steps = {steps}
per_device_train_batch_size = 8
logging_steps = 1
save_strategy = "no"
report_to = ["mlflow", "tensorboard"]
disable_tqdm = true
"""


@dataclass(frozen=True)
class Fault:
    """One fault, injected once step ``step`` has ended.

    ``kind`` is ``outage`` (the proxy drops every connection for ``seconds``), ``5xx`` (the next
    ``count`` requests get ``status``), ``429`` (the next ``count`` get 429 with ``Retry-After:
    seconds``) or ``latency`` (every request waits ``seconds`` until ``until_step`` has ended).
    """

    step: int
    kind: str
    seconds: float = 0.0
    count: int = 0
    status: int = 0
    until_step: int = 0

    def describe(self) -> str:
        """A short label for tables and failure messages."""
        if self.kind == "outage":
            return f"outage {self.seconds:.1f}s@{self.step}"
        if self.kind == "5xx":
            return f"{self.count}x{self.status}@{self.step}"
        if self.kind == "429":
            return f"{self.count}x429(retry {self.seconds:.1f}s)@{self.step}"
        return f"latency {self.seconds:.1f}s@{self.step}-{self.until_step}"


@dataclass(frozen=True)
class ChaosPlan:
    """What happens to one run: its faults, and how and at which step it ends."""

    seed: int
    steps: int
    faults: tuple[Fault, ...]
    end: End
    end_step: int

    def describe(self) -> str:
        """The seed, the end and the faults on one line, enough to reproduce the run."""
        faults = ", ".join(f.describe() for f in self.faults) or "no faults"
        ending = "runs to the end" if self.end == "complete" else f"{self.end}@{self.end_step}"
        return f"seed {self.seed}: {self.steps} steps, {ending}; {faults}"


def make_plan(
    seed: int,
    *,
    steps: int,
    ends: Sequence[End] = ("complete", "sigkill"),
    faults: tuple[int, int] = (1, 3),
    fault_s: tuple[float, float] = (1.5, 3.0),
) -> ChaosPlan:
    """A random plan drawn from ``seed`` alone, so a failing seed reproduces.

    Args:
        seed: the only source of randomness.
        steps: the run's ``max_steps``.
        ends: how a run may end; one is drawn (SIGTERM only when listed).
        faults: the least and most faults per run.
        fault_s: the shortest and longest fault (outage, Retry-After, per-request latency);
            keep the shortest above the harness's ``stall_s`` so a waiting step would show.
    """
    rng = random.Random(seed)
    end: End = rng.choice(list(ends))
    end_step = steps if end == "complete" else rng.randint(steps // 5, steps - steps // 10)
    drawn = []
    for _ in range(rng.randint(*faults)):
        kind = rng.choice(FAULT_KINDS)
        at = rng.randint(1, max(1, end_step - 1))
        seconds = round(rng.uniform(*fault_s), 2)
        if kind == "5xx":
            drawn.append(
                Fault(at, kind, count=rng.randint(1, 5), status=rng.choice((500, 502, 503)))
            )
        elif kind == "429":
            drawn.append(Fault(at, kind, seconds=seconds, count=rng.randint(1, 3)))
        elif kind == "latency":
            until = min(steps, at + rng.randint(steps // 10, steps // 3))
            drawn.append(Fault(at, kind, seconds=seconds, until_step=until))
        else:
            drawn.append(Fault(at, kind, seconds=seconds))
    return ChaosPlan(seed, steps, tuple(sorted(drawn, key=lambda f: f.step)), end, end_step)


@dataclass
class ChaosOutcome:
    """What one run did and what the destinations hold afterwards."""

    plan: ChaosPlan
    exit_code: int | None = None
    sync_exit_code: int | None = None
    run_status: str = ""
    mlflow_status: str = ""
    journal_points: int = 0
    steps_done: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    max_step_gap_s: float = 0.0
    stalled_steps: int = 0
    faults_injected: int = 0
    errors: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing twice, no stalled step, training and sync exited as planned."""
        return not (self.errors or any(self.lost.values()) or any(self.duplicated.values())) and (
            self.stalled_steps == 0
        )

    def summary(self) -> str:
        """One paragraph naming the seed, for an assertion message or a benchmark log."""
        return (
            f"{self.plan.describe()} -> exit {self.exit_code}, sync exit {self.sync_exit_code}, "
            f"run.json {self.run_status!r}, MLflow {self.mlflow_status!r}; "
            f"{self.journal_points} journal points over {self.steps_done} steps; "
            f"lost {self.lost}, duplicated {self.duplicated}, stalled steps {self.stalled_steps} "
            f"(largest step gap {self.max_step_gap_s:.3f} s); errors {self.errors}; "
            f"examples {self.examples}"
        )


# --- running one plan ---------------------------------------------------------------------------


def run_plan(
    plan: ChaosPlan,
    workdir: Path,
    mlflow_url: str,
    *,
    step_delay_s: float = 0.01,
    stall_s: float = 1.0,
    timeout_s: float = 120.0,
) -> ChaosOutcome:
    """Train under ``plan``'s faults, end it as planned, run ``trainbus sync``, compare.

    Args:
        plan: the faults and the end, from :func:`make_plan`.
        workdir: an empty directory for this run (config, output, TensorBoard, user sink file).
        mlflow_url: the real MLflow server; training reaches it through a fault proxy, sync
            directly.
        step_delay_s: simulated compute per step, so faults overlap training.
        stall_s: a step ending more than this after the previous one counts as stalled.
        timeout_s: the most the training, and then the sync, may take before it is a hang.
    """
    outcome = ChaosOutcome(plan)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "run.toml"
    config.write_text(CONFIG.format(output_dir=workdir / "out", steps=plan.steps))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MLFLOW_EXPERIMENT_NAME": f"chaos-{plan.seed}-{workdir.name}",
        "TENSORBOARD_LOGGING_DIR": str(workdir / "tb"),
        "TRAINBUS_JSONL": str(workdir / "metrics.jsonl"),
        "TRAINBUS_CHAOS_STEP_DELAY": str(step_delay_s),
    }
    with FaultProxy(mlflow_url) as proxy:
        outcome.exit_code = _train(plan, proxy, config, env, workdir, outcome, timeout_s)
        outcome.faults_injected = sum(proxy.stats.injected.values()) + proxy.stats.dropped
    try:
        run_dir = find_run_dir(workdir / "out")
    except ValueError as exc:
        outcome.errors.append(f"no run directory: {exc}")
        return outcome
    sync = subprocess.run(
        [
            *(sys.executable, "-m", "trainbus", "--log-level", "WARNING", "sync"),
            *(str(run_dir.path), "--sink-class", USER_SINK, "--app-dir", str(ROOT)),
        ],
        cwd=ROOT,
        env={**env, "MLFLOW_TRACKING_URI": mlflow_url},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    outcome.sync_exit_code = sync.returncode
    if sync.returncode != 0:
        outcome.errors.append(f"sync exited {sync.returncode}: {sync.stderr.strip()[-500:]}")
    outcome.run_status = run_dir.read_record().status
    _compare_all(run_dir, workdir, mlflow_url, outcome, stall_s)
    wanted = FINAL_STATUS[plan.end]
    if (outcome.run_status, outcome.mlflow_status) != wanted:
        outcome.errors.append(
            f"after sync run.json says {outcome.run_status!r} and MLflow {outcome.mlflow_status!r}"
            f", expected {wanted}"
        )
    return outcome


def _train(
    plan: ChaosPlan,
    proxy: FaultProxy,
    config: Path,
    env: Mapping[str, str],
    workdir: Path,
    outcome: ChaosOutcome,
    timeout_s: float,
) -> int | None:
    """Run the training process, injecting each fault when its step has ended."""
    pending = [(f.step, f) for f in plan.faults]
    pending += [(f.until_step, f) for f in plan.faults if f.kind == "latency"]
    pending.sort(key=lambda item: item[0])
    started: set[int] = set()
    with (workdir / "train.stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "train", str(config)],
            cwd=ROOT,
            env={**env, "MLFLOW_TRACKING_URI": proxy.url},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        signalled = False
        try:
            for step in _steps(proc.stdout, timeout_s):
                while pending and pending[0][0] <= step:
                    _, fault = pending.pop(0)
                    _inject(proxy, fault, starting=id(fault) not in started)
                    started.add(id(fault))
                if plan.end != "complete" and step >= plan.end_step and not signalled:
                    sig = signal.SIGKILL if plan.end == "sigkill" else signal.SIGTERM
                    proc.send_signal(sig)
                    signalled = True
                    if plan.end == "sigkill":
                        break
        except TimeoutError:
            outcome.errors.append(f"training printed no step for {timeout_s:.0f} s: hung")
            proc.kill()
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            outcome.errors.append(f"training did not exit within {timeout_s:.0f} s: hung")
            proc.kill()
            code = proc.wait()
        proc.stdout.close()
    expected = {"complete": 0, "sigkill": -signal.SIGKILL, "sigterm": 143}[plan.end]
    if code != expected:
        tail = (workdir / "train.stderr").read_text()[-500:]
        outcome.errors.append(f"training exited {code}, expected {expected}: {tail}")
    return code


def _steps(stdout: IO[str], timeout_s: float) -> Iterator[int]:
    """The steps the ticker reports, in order, until the process closes its output.

    A reader thread hands lines over a queue, so waiting for the next one is bounded by
    ``timeout_s`` (a hung process) without the harness polling.
    """
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            return
        if line.startswith(PREFIX):
            yield int(line[len(PREFIX) :])


def _inject(proxy: FaultProxy, fault: Fault, *, starting: bool) -> None:
    """Start ``fault`` on the proxy (or, for latency, end it when ``starting`` is false)."""
    if fault.kind == "outage":
        proxy.go_down(fault.seconds)
    elif fault.kind == "5xx":
        proxy.fail_next(fault.count, status=fault.status)
    elif fault.kind == "429":
        proxy.throttle_next(fault.count, retry_after=fault.seconds)
    else:
        proxy.latency = fault.seconds if starting else 0.0


# --- comparing ----------------------------------------------------------------------------------


def compare_points(expected: Counter[Point], found: Counter[Point]) -> tuple[int, int, list[str]]:
    """Points in ``expected`` missing from ``found``, points found more often than expected, and
    a few examples of each (``key@step``)."""
    missing = expected - found
    extra = found - expected
    examples = [f"lost {k}@{s}" for k, s in sorted(missing)[:3]]
    examples += [f"twice {k}@{s}" for k, s in sorted(extra)[:3]]
    return sum(missing.values()), sum(extra.values()), examples


def _compare_all(
    run_dir: RunDir, workdir: Path, mlflow_url: str, outcome: ChaosOutcome, stall_s: float
) -> None:
    logs = []
    step_times = []
    for event in JournalReader(run_dir.journal_path).read_from(0):
        if isinstance(event, Log):
            logs.append(event)
        elif isinstance(event, StepEnd):
            step_times.append(event.time)
    outcome.steps_done = len(step_times)
    gaps = [b - a for a, b in itertools.pairwise(step_times)]
    outcome.max_step_gap_s = max(gaps, default=0.0)
    outcome.stalled_steps = sum(1 for gap in gaps if gap > stall_s)
    expected = {
        # MLflow keeps one row per (key, step, timestamp, value): two journal points equal in all
        # four (the last step's epoch, logged again by the closing summary within the same
        # millisecond) are one point there, so they are expected once.
        "mlflow": Counter(
            (key, step)
            for key, step, _, _ in {
                (sanitize_key(k), e.global_step, round(e.time * 1000), v)
                for e in logs
                for k, v in numeric_items(e.logs)
            }
        ),
        "tensorboard": Counter(
            (k, e.global_step)
            for e in logs
            for k, v in rewrite_logs(e.logs).items()
            if isinstance(v, int | float)
        ),
        "jsonlines": Counter((k, e.global_step) for e in logs for k in e.logs),
    }
    outcome.journal_points = sum(expected["jsonlines"].values())
    readers: dict[str, Callable[[], Counter[Point]]] = {
        "mlflow": lambda: _mlflow_points(run_dir, mlflow_url, expected["mlflow"], outcome),
        "tensorboard": lambda: _tensorboard_points(workdir / "tb"),
        "jsonlines": lambda: _jsonl_points(workdir / "metrics.jsonl"),
    }
    for name, read in readers.items():
        try:
            found = read()
        except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
            outcome.errors.append(f"reading {name} failed: {type(exc).__name__}: {exc}")
            continue
        lost, duplicated, examples = compare_points(expected[name], found)
        outcome.lost[name], outcome.duplicated[name] = lost, duplicated
        if examples:
            outcome.examples[name] = examples


def _mlflow_points(
    run_dir: RunDir, url: str, expected: Counter[Point], outcome: ChaosOutcome
) -> Counter[Point]:
    """Every point MLflow's own metric history holds for the run, duplicates included."""
    run_id = json.loads((run_dir.path / "mlflow.json").read_text())["run_id"]
    with httpx.Client(base_url=url, timeout=30) as client:
        info = client.get("/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        info.raise_for_status()
        run = info.json()["run"]
        outcome.mlflow_status = str(run["info"].get("status", ""))
        keys = {m["key"] for m in run.get("data", {}).get("metrics", [])} | {k for k, _ in expected}
        found: Counter[Point] = Counter()
        for key in sorted(keys):
            history = client.get(
                "/api/2.0/mlflow/metrics/get-history",
                params={"run_id": run_id, "metric_key": key, "max_results": 100000},
            )
            history.raise_for_status()
            found.update((key, int(m["step"])) for m in history.json().get("metrics", []))
    return found


def _tensorboard_points(directory: Path) -> Counter[Point]:
    """Every scalar TensorBoard's own reader finds, a rewritten step counted each time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not directory.is_dir():
        return Counter()
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    return Counter(
        (tag, int(scalar.step)) for tag in acc.Tags()["scalars"] for scalar in acc.Scalars(tag)
    )


def _jsonl_points(path: Path) -> Counter[Point]:
    """Every ``key@step`` in the user sink's file."""
    found: Counter[Point] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            step = int(row.pop("step"))
            row.pop("seq")
            found.update((key, step) for key in row)
    return found


def total(counts: Iterable[Mapping[str, int]]) -> int:
    """The sum over runs and destinations of a lost or duplicated count."""
    return sum(sum(c.values()) for c in counts)
