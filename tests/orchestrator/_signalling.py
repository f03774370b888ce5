"""Callbacks and models that signal their own ``trainbus train`` process at a chosen point.

The subprocess tests load them by ``module:Class`` from the run file and configure them through
the environment, so the signal arrives at a known step (no waiting on the test's side):

* ``TRAINBUS_TEST_SIGNAL=SIGTERM@5`` makes ``SignalAt`` send SIGTERM at the end of update 5;
* ``TRAINBUS_TEST_SIGNAL_ON_SAVE=SIGTERM`` makes ``SignalOnSaveRegressor`` send it while the
  first checkpoint's weights are being written; ``SIGTERMx2`` sends it twice.

Unset, both are inert (the tests build the same trainer in-process to resume from).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from trainbus.trainer import TrainerCallback
from trainbus.trainer.testing import TinyRegressor

__all__ = ["SignalAt", "SignalOnSaveRegressor"]


def _send(spec: str) -> None:
    """Send ``NAME`` (or ``NAMExN``: N times) to this process."""
    name, _, times = spec.partition("x")
    for _ in range(int(times or 1)):
        os.kill(os.getpid(), signal.Signals[name])


class SignalAt(TrainerCallback):
    """Signals this process at the end of the update ``TRAINBUS_TEST_SIGNAL`` names."""

    def __init__(self) -> None:
        spec = os.environ.get("TRAINBUS_TEST_SIGNAL", "")
        self.signal, _, step = spec.partition("@")
        self.step = int(step) if step else -1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            _send(self.signal)


class SignalOnSaveRegressor(TinyRegressor):
    """``TinyRegressor`` that signals itself when a checkpoint first reads its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = os.environ.get("TRAINBUS_TEST_SIGNAL_ON_SAVE", "")

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        if self.pending:
            spec, self.pending = self.pending, ""
            _send(spec)
        return super().state_dict(*args, **kwargs)
