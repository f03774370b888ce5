"""A callback that tells a parent process each step as it ends, for fault injection by step.

The chaos harness (``tests/support/chaos.py``) starts ``trainbus train`` with this callback and
reads its standard output line by line: it injects a fault or sends a signal when a given step
has ended, so a run is reproducible from its seed without the parent polling the run directory.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from trainbus.trainer import TrainerCallback

__all__ = ["PREFIX", "StepTicker"]

PREFIX = "chaos-step "
"""Each line the ticker prints starts with this; the parent ignores every other line."""


class StepTicker(TrainerCallback):
    """Print ``chaos-step <global_step>`` and flush at the end of every optimizer step.

    ``TRAINBUS_CHAOS_STEP_DELAY`` seconds of simulated compute per step (default none): the tiny
    model trains a step in well under a millisecond, too fast for a fault to overlap training.
    """

    def __init__(self) -> None:
        self.delay = float(os.environ.get("TRAINBUS_CHAOS_STEP_DELAY", "0"))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.delay > 0:
            time.sleep(self.delay)  # stands for the forward and backward pass of a real model
        # A pipe is block-buffered: without the flush the parent would learn of steps in bursts.
        sys.stdout.write(f"{PREFIX}{state.global_step}\n")
        sys.stdout.flush()
