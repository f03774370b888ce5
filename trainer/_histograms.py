"""Histograms of the model's gradients and parameters, for the sinks that ask (``WANDB_WATCH``).

Transformers' W&B callback calls ``wandb.watch(model, log=..., log_freq=max(100,
logging_steps))``, which hooks every parameter and histograms it on the training thread inside
the SDK. Here the trainer computes the same histograms (64 equal bins between the tensor's
smallest and largest finite value, one bin when they are equal, named as ``named_parameters()``
names them) on the tensor's own device with ``torch.histc``, and publishes them as
``Histograms`` events; a sink turns them into its tracker's histograms.

The cost is decided once, when training starts: with no sink asking, the loop's steppers are
left as they are and nothing here runs. With one asking, the clip stepper is wrapped to
histogram the gradients (after the step's backward passes, before clipping: the gradients the
backward passes left, as ``wandb.watch``'s gradient hooks see them) and the optimizer stepper to
histogram the parameters once they are updated, both only on every ``max(100,
logging_steps)``-th optimizer step; each costs two device-to-host copies, whatever the number of
parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import torch

from trainbus.bus._events import Histograms, HistogramSource, TensorHistogram
from trainbus.trainer._precision import Steppers

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = ["BINS", "histogram_interval", "tensor_histograms", "watch_steppers"]

BINS: Final = 64
"""Bins per histogram, as ``wandb.watch`` uses."""


def histogram_interval(logging_steps: float) -> int:
    """Optimizer steps between two histograms: transformers' ``max(100, logging_steps)``."""
    return max(100, int(logging_steps))


def tensor_histograms(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, TensorHistogram]:
    """The histogram of each tensor's finite values; a tensor with none is left out.

    Bounds and counts each come back from the device in one copy for all tensors, not one per
    tensor: ``torch.histc`` ignores what lies outside its bounds, so infinities and NaNs need
    no filtering on the device.
    """
    names: list[str] = []
    flats: list[torch.Tensor] = []
    bounds: list[torch.Tensor] = []
    for name, tensor in named:
        flat = tensor.detach().reshape(-1).float()
        if flat.numel() == 0:
            continue
        finite = torch.isfinite(flat)
        inf = flat.new_tensor(float("inf"))
        low = torch.where(finite, flat, inf).min()
        high = torch.where(finite, flat, -inf).max()
        names.append(name)
        flats.append(flat)
        bounds.append(torch.stack([low, high, finite.sum().to(flat.dtype)]))
    if not names:
        return {}
    host_bounds: list[list[float]] = torch.stack(bounds).cpu().tolist()
    counts: list[torch.Tensor] = []
    kept: list[tuple[str, float, float]] = []
    for name, flat, (bottom, top, total) in zip(names, flats, host_bounds, strict=True):
        if total == 0:
            continue
        kept.append((name, bottom, top))
        if bottom == top:
            counts.append(torch.nn.functional.pad(flat.new_tensor([total]), (0, BINS - 1)))
        else:
            counts.append(torch.histc(flat, bins=BINS, min=bottom, max=top))
    if not kept:
        return {}
    host_counts: list[list[float]] = torch.stack(counts).cpu().tolist()
    return {
        name: TensorHistogram(
            low=bottom, high=top, counts=[int(c) for c in (row[:1] if bottom == top else row)]
        )
        for (name, bottom, top), row in zip(kept, host_counts, strict=True)
    }


def watch_steppers(steppers: Steppers, trainer: Trainer) -> Steppers:
    """``steppers``, wrapped to publish the histograms the run's sinks ask for; unchanged (so
    free) when none asks."""
    bus = trainer._bus  # the run's sinks, wherever they run, said it: RunContext.wants_histograms
    sources = bus.context.wants_histograms if bus is not None else frozenset()
    if not sources:
        return steppers
    every = histogram_interval(trainer.args.logging_steps)
    model = trainer.model
    state = trainer.state

    def due() -> bool:  # the step being taken is global_step + 1
        return (state.global_step + 1) % every == 0

    def publish(source: HistogramSource, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        values = tensor_histograms(named)
        trainer._flush_marks()  # keeps seq in the order things happened
        bus = trainer._bus
        if values and bus is not None:
            bus.emit(
                Histograms,
                global_step=state.global_step + 1,
                epoch=state.epoch,
                source=source,
                histograms=values,
            )

    clip, step, schedule = steppers
    if "gradients" in sources:
        inner_clip: Callable[..., Any] = clip

        def clip(params: Any, max_norm: float) -> Any:
            if due():
                publish(
                    "gradients",
                    ((n, p.grad) for n, p in model.named_parameters() if p.grad is not None),
                )
            return inner_clip(params, max_norm)

    if "parameters" in sources:
        inner_step: Callable[[], Any] = step

        def step() -> Any:
            result = inner_step()
            if due():
                publish("parameters", model.named_parameters())
            return result

    return Steppers(clip, step, schedule)
