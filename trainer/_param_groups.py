"""Optimizer and scheduler states in transformers' parameter-group layout, both ways.

A saved optimizer state numbers parameters by their position across the parameter groups; a
scheduler's state has one entry per group (``base_lrs``, ``_last_lr``, ``lr_lambdas``). Neither
names the parameters, so a file only loads into an optimizer whose groups hold the same parameters
in the same order. transformers' default optimizer always has two groups, in the model's
parameter order: the parameters that decay, then the others (biases, normalisation weights). Ours
keeps one group when there is no weight decay (a second group costs a second pass of AdamW's code
on every step, for nothing), and splits by dimension otherwise.

So the files are translated, at save and at load time only (never per step):

* ``optimizer.pt`` and ``scheduler.pt`` are written in transformers' layout whenever our groups
  map onto it without losing a setting (each of its groups draws from groups with equal
  settings), so ``transformers.Trainer`` resumes from them; otherwise (an optimizer of the user's
  own, say) in the optimizer's own layout, with ``param_names`` in each group so that reading it
  back is unambiguous.
* On load, a file with ``param_names`` is matched by name; one without is taken to be in
  transformers' layout when its group sizes say so, else in the optimizer's own; anything else is
  a `ConfigurationError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._optimizers import decay_parameter_names, weight_groups

__all__ = ["export_states", "import_states", "transformers_groups"]

Groups = list[list[nn.Parameter]]

_PER_GROUP: Final = ("base_lrs", "_last_lr", "lr_lambdas")
"""Scheduler state entries that hold one value per parameter group."""


def transformers_groups(model: nn.Module) -> Groups:
    """The trainable parameters in transformers' two groups: decaying first, then the others
    (the rule is ``trainbus.trainer._optimizers``'s, which builds the optimizers)."""
    groups = weight_groups(model, decay_parameter_names(model), 0.0)
    return [list(group["params"]) for group in groups]


def _own_groups(optimizer: Optimizer) -> Groups:
    return [list(group["params"]) for group in optimizer.param_groups]


def _ids(groups: Groups) -> list[list[int]]:
    return [[id(param) for param in group] for group in groups]


def _settings(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "param_names")}


def _regroup_optimizer(
    saved: dict[str, Any], source: Groups, target: Groups, fallback: list[dict[str, Any]]
) -> dict[str, Any]:
    """``saved`` (laid out as ``source``) laid out as ``target``, parameters matched by identity.

    A target group takes the settings of the source group its first parameter came from (an
    empty one keeps ``fallback``'s, the settings of the group at that position now).
    """
    flat_source = [param for group in source for param in group]
    flat_target = [param for group in target for param in group]
    index = {id(param): position for position, param in enumerate(flat_target)}
    group_of = {id(param): number for number, group in enumerate(source) for param in group}
    saved_state = saved["state"]
    state = {
        index[id(param)]: saved_state[position]
        for position, param in enumerate(flat_source)
        if position in saved_state and id(param) in index
    }
    param_groups = []
    start = 0
    for number, group in enumerate(target):
        if group:
            settings = _settings(saved["param_groups"][group_of[id(group[0])]])
        else:
            settings = _settings(fallback[min(number, len(fallback) - 1)])
        param_groups.append({**settings, "params": list(range(start, start + len(group)))})
        start += len(group)
    return {"state": state, "param_groups": param_groups}


def _regroup_scheduler(saved: dict[str, Any], source: Groups, target: Groups) -> dict[str, Any]:
    """A scheduler state's per-group entries re-laid from ``source`` groups to ``target`` ones."""
    group_of = {id(param): number for number, group in enumerate(source) for param in group}
    picks = [group_of[id(group[0])] if group else 0 for group in target]
    out = dict(saved)
    for key in _PER_GROUP:
        values = saved.get(key)
        if isinstance(values, list) and len(values) == len(source):
            out[key] = [values[pick] for pick in picks]
    return out


def _maps_without_loss(optimizer: Optimizer, own: Groups, target: Groups) -> bool:
    """Whether every target group draws only on own groups with the same settings."""
    if sorted(id(p) for g in own for p in g) != sorted(id(p) for g in target for p in g):
        return False
    settings = [_settings(group) for group in optimizer.param_groups]
    group_of = {id(param): number for number, group in enumerate(own) for param in group}
    return all(
        len({repr(settings[group_of[id(param)]]) for param in group}) <= 1 for group in target
    )


def export_states(
    model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The optimizer's and scheduler's states as files should hold them (see module docstring)."""
    own = _own_groups(optimizer)
    target = transformers_groups(model)
    optimizer_state = optimizer.state_dict()
    scheduler_state = scheduler.state_dict() if scheduler is not None else None
    if _ids(own) == _ids(target):
        return optimizer_state, scheduler_state
    if _maps_without_loss(optimizer, own, target):
        optimizer_state = _regroup_optimizer(
            optimizer_state, own, target, optimizer.state_dict()["param_groups"]
        )
        if scheduler_state is not None:
            scheduler_state = _regroup_scheduler(scheduler_state, own, target)
        return optimizer_state, scheduler_state
    names = {id(param): name for name, param in model.named_parameters()}
    for group, params in zip(optimizer_state["param_groups"], own, strict=True):
        group["param_names"] = [names.get(id(param), "") for param in params]
    return optimizer_state, scheduler_state


def _source_groups(saved: dict[str, Any], model: nn.Module, own: Groups, file_name: str) -> Groups:
    """How the parameters of ``saved`` were grouped when it was written."""
    saved_groups: Sequence[dict[str, Any]] = saved["param_groups"]
    if all("param_names" in group for group in saved_groups):
        by_name = dict(model.named_parameters())
        missing = [n for g in saved_groups for n in g["param_names"] if n not in by_name]
        if missing:
            raise ConfigurationError(
                f"{file_name} names parameters this model does not have: {', '.join(missing[:5])}"
            )
        return [[by_name[name] for name in group["param_names"]] for group in saved_groups]
    sizes = [len(group["params"]) for group in saved_groups]
    transformers = transformers_groups(model)
    if sizes == [len(group) for group in transformers]:
        return transformers
    if sizes == [len(group) for group in own]:
        return own
    raise ConfigurationError(
        f"{file_name} holds parameter groups of sizes {sizes}, but this model's optimizer has "
        f"{[len(group) for group in own]} (and transformers' layout would be "
        f"{[len(group) for group in transformers]}): was it written for another model?"
    )


def import_states(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    saved_optimizer: dict[str, Any],
    saved_scheduler: dict[str, Any] | None,
    *,
    file_name: str,
) -> None:
    """Load saved states written in any layout ``export_states`` (or transformers) writes."""
    own = _own_groups(optimizer)
    source = _source_groups(saved_optimizer, model, own, file_name)
    fallback = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict(_regroup_optimizer(saved_optimizer, source, own, fallback))
    if scheduler is not None and saved_scheduler is not None:
        scheduler.load_state_dict(_regroup_scheduler(saved_scheduler, source, own))
