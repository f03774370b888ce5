"""The end of a run: time from the last training step to ``train()`` returning, MLflow at +200 ms.

The trainbus ``Trainer`` trains the shared workload (``_common.Workload``) at
``logging_steps=1``, reporting to a real local ``mlflow server`` through the latency proxy
(``benchmarks._proxy``: 200 ms added to every request), until the MLflow sink is in its steady
state, then ends. Measured, per run: the time from the end of the last step (its
``on_step_end``) to ``train()`` returning; the training thread's own final work within it (up
to ``on_train_end``: the summary log and, where asked, the final evaluation and save); one
round trip to the tracker (the median of five small requests through the same proxy right
after the run); and whether MLflow holds every step's loss exactly once.

Three cases: no final work; a final evaluation and save at the last step (asked by the
callback); the same with the MLflow sink in the sink process (``TRAINBUS_SINK_PROCESS=1``).
Each is run by the code of this checkout ("after") and by the code of ``--baseline`` ("before":
its ``trainbus`` package extracted with ``git archive``, put first on ``PYTHONPATH``), each run
in a fresh process, the two alternating round by round (A B, B A, ...) so that both see the same
background load. The target, per case: the median end of "after" at most one round trip plus
the final work.

Run alone with ``python -m benchmarks.bench_teardown [--quick] [--baseline REF]``; writes
``results/teardown.json``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks._common import (
    BENCH_DIR,
    Headline,
    Workload,
    abab_order,
    bench_args,
    bench_mode,
    bench_parser,
    format_table,
    median,
    wait_for_sink_processes,
    write_result,
)
from benchmarks._proxy import LatencyProxy

LATENCY_S: Final = 0.2
"""Seconds the proxy adds to every request."""
BASELINE_REF: Final = "cc5dd3d"
"""The last commit before the end of a run overlapped its final work (``Bus.begin_flush``), the
final MLflow status went out beside the last metrics, and the sink process's exit stopped being
waited for."""
CASES: Final = {
    "no final work": {},
    "final evaluation and save": {"final": True},
    "final evaluation and save, sink process": {"final": True, "sink_process": True},
}
PLAN: Final = {"full": (4.0, 5), "quick": (4.0, 2), "smoke": (1.0, 1)}
"""Seconds of training per run (the MLflow sink has created its run and delivers steadily by
then) and rounds."""
EXPERIMENT: Final = "bench-teardown"
LAYERS: Final = ("trainbus", "bus", "trainer", "sinks", "orchestrator")


# --- one run, in a worker process ---------------------------------------------------------------


def run_case(
    case: str, seconds: float, root: Path, proxy_url: str, server_url: str
) -> dict[str, Any]:
    """Train for ``seconds`` reporting to MLflow through the proxy; time the end of the run.

    The run is stopped by a callback, as a user's would; in the cases with final work it also
    asks for the evaluation and the save at that step."""
    import httpx
    import torch

    from benchmarks._contenders import BatchList, Classifier, unwrap
    from trainbus.trainer import PrinterCallback, Trainer, TrainerCallback

    torch.set_num_threads(1)
    settings = CASES[case]
    work = Workload()
    marks: dict[str, float] = {}
    last: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            marks.setdefault("first_step", now)
            if now - marks["first_step"] >= seconds:
                control.should_training_stop = True
                control.should_evaluate = control.should_save = bool(settings.get("final"))
                last.append(state.global_step)
                marks["last_step"] = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks["train_end"] = time.perf_counter()

    # Evaluation and saving happen only when the callback asks (the strategies' steps are never
    # reached); the strategies must still be set for the trainer to accept an eval set.
    final: dict[str, Any] = {}
    if settings.get("final"):
        final = {"eval_strategy": "steps", "eval_steps": 10**9}
        final.update(save_strategy="steps", save_steps=10**9)
    output_dir = root / f"run-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        MLFLOW_TRACKING_URI=proxy_url,
        MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
        TRAINBUS_SINK_PROCESS="1" if settings.get("sink_process") else "0",
    )
    args = bench_args(work, output_dir, report_to=["mlflow"], run_name="teardown", **final)
    trainer = Trainer(
        Classifier(work),
        args,
        train_dataset=BatchList(work),
        eval_dataset=BatchList(work) if final else None,
        data_collator=unwrap,
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    returned = time.perf_counter()
    wait_for_sink_processes()
    with httpx.Client(base_url=proxy_url, timeout=30) as client:
        trips = []
        for _ in range(5):
            began = time.perf_counter()
            client.get(
                "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": EXPERIMENT}
            ).raise_for_status()
            trips.append(time.perf_counter() - began)
    state = json.loads(next(output_dir.glob("trainbus/*/mlflow.json")).read_text())
    history = httpx.get(
        f"{server_url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": state["run_id"], "metric_key": "loss"},
        timeout=30,
    ).json()["metrics"]
    points = sorted(int(point["step"]) for point in history)
    return {
        "end_ms": (returned - marks["last_step"]) * 1000,
        "final_work_ms": (marks["train_end"] - marks["last_step"]) * 1000,
        "round_trip_ms": median(trips) * 1000,
        "steps": last[0],
        "points_once": points == list(range(1, last[0] + 1)),
    }


def worker(options: Any) -> None:
    """Run the cases named on the command line, one after the other; print them as JSON."""
    from benchmarks._sink_stage import quiet

    root = Path(options.root)
    rows = []
    with quiet():
        run_case(options.cases[0], 0.2, root, options.proxy, options.server)  # first-time costs
        for case in options.cases:
            row = run_case(case, options.seconds, root, options.proxy, options.server)
            rows.append({"case": case, **row})
    print("ROWS " + json.dumps(rows), flush=True)


# --- the comparison ----------------------------------------------------------------------------


def extract(ref: str, into: Path) -> Path | None:
    """``ref``'s ``trainbus`` package (and the layer folders it links to) under ``into``;
    ``None`` where git or the commit is not there."""
    try:
        archive = subprocess.run(
            ["git", "archive", ref, *LAYERS],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            check=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"baseline {ref!r} not available ({exc}); 'before' is not measured", flush=True)
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(
    code: Path | None, cases: Sequence[str], seconds: float, root: Path, stage: tuple[str, str]
) -> list[dict[str, Any]]:
    """One worker process running ``cases`` with the code at ``code`` (this checkout: None)."""
    repo = BENCH_DIR.parent
    path = [str(code)] if code is not None else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, str(repo)]))
    command = [sys.executable, "-m", "benchmarks.bench_teardown", "--worker"]
    command += ["--seconds", str(seconds), "--root", str(root), "--proxy", stage[0]]
    command += ["--server", stage[1], *[f"--case={case}" for case in cases]]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the teardown worker failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    rows: list[dict[str, Any]] = json.loads(lines[-1].removeprefix("ROWS "))
    return rows


def summary(runs: Sequence[dict[str, Any]], cases: Sequence[str]) -> list[dict[str, Any]]:
    """Per case and code, the medians over rounds."""
    table = []
    for case in cases:
        for code in ("before", "after"):
            mine = [r for r in runs if r["case"] == case and r["code"] == code]
            if not mine:
                continue
            table.append(
                {
                    "case": case,
                    "code": code,
                    "runs": len(mine),
                    "end_ms": median([r["end_ms"] for r in mine]),
                    "final_work_ms": median([r["final_work_ms"] for r in mine]),
                    "round_trip_ms": median([r["round_trip_ms"] for r in mine]),
                    "flush_ms": median([r["end_ms"] - r["final_work_ms"] for r in mine]),
                    "points_once": all(r["points_once"] for r in mine),
                }
            )
    return table


def headline(table: Sequence[dict[str, Any]], case: str, baseline: str | None) -> Headline:
    """The "after" median end of ``case`` against one round trip plus the final work."""
    rows = {row["code"]: row for row in table if row["case"] == case}
    after = rows["after"]
    bound = after["round_trip_ms"] + after["final_work_ms"]
    before = rows.get("before")
    said = (
        f"before ({baseline}): {before['end_ms']:.0f} ms"
        if before is not None
        else "before: not measured"
    )
    return Headline(
        name=f"end of train(), last step to return, MLflow REST +200 ms: {case}",
        value=after["end_ms"],
        unit="ms",
        target="<= 1 round trip + final work",
        met=bool(after["end_ms"] <= bound and after["points_once"]),
        note=(
            f"median of {after['runs']} runs; {said}; round trip {after['round_trip_ms']:.0f} ms, "
            f"final work {after['final_work_ms']:.0f} ms; every loss point in MLflow exactly "
            f"once: {'yes' if after['points_once'] else 'NO'}"
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__, "two rounds")
    parser.add_argument("--baseline", default=BASELINE_REF, help="the 'before' commit")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--worker", action="store_true", help=argparse_hidden())
    parser.add_argument("--case", dest="cases", action="append", default=[])
    for name in ("--seconds", "--root", "--proxy", "--server"):
        parser.add_argument(name, default=None, help=argparse_hidden())
    options = parser.parse_args(argv)
    if options.worker:
        options.seconds = float(options.seconds)
        worker(options)
        return
    mode = bench_mode(options.quick)
    seconds, rounds = PLAN[mode]
    cases = list(CASES) if mode != "smoke" else list(CASES)[:2]
    from tests.support.mlflow_server import MlflowServer

    with tempfile.TemporaryDirectory(prefix="bench-teardown-") as tmp:
        root = Path(tmp)
        baseline = None
        code: dict[str, Path | None] = {"after": None}
        if mode != "smoke" and not options.no_baseline:
            extracted = extract(options.baseline, root / "before")
            if extracted is not None:
                code["before"], baseline = extracted, options.baseline
        server = MlflowServer(root / "mlflow")
        server.start()
        proxy = LatencyProxy(server.url, LATENCY_S).start()
        runs: list[dict[str, Any]] = []
        try:
            for index, name in enumerate(abab_order(list(code), rounds)):
                for row in measure(code[name], cases, seconds, root, (proxy.url, server.url)):
                    runs.append({"round": index // len(code), "code": name, **row})
                    print(format_table([runs[-1]]), flush=True)
        finally:
            proxy.stop()
            server.stop()
    table = summary(runs, cases)
    print(format_table(table))
    path = write_result(
        "teardown",
        quick=mode != "full",
        headline=[headline(table, case, baseline) for case in cases],
        tables={"teardown": table, "runs": runs},
        extra={
            "workload": Workload().describe(),
            "seconds": seconds,
            "rounds": rounds,
            "baseline": baseline,
            "latency_s": LATENCY_S,
        },
    )
    print(f"\nwrote {path}")


def argparse_hidden() -> str:
    """Help text of the options the benchmark passes to its own worker processes."""
    return "internal: set by the benchmark for its worker processes"


if __name__ == "__main__":
    main()
