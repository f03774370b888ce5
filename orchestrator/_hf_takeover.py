"""Which integrations the bridge takes over from transformers, and removing transformers' own.

``transformers.Trainer`` builds one integration callback per name in ``args.report_to``
(``MLflowCallback`` for ``"mlflow"``, ...) in its ``__init__``, before any callback can object.
Left in place, each would log every point a second time beside the bridge's sink. A callback is
never handed the trainer, but every hook is called by the trainer's ``CallbackHandler``
(``call_event``), so the bridge finds that handler one or two frames up the stack, checks its type,
and replaces its list without the callbacks it took over. Replacing the list (rather than removing
in place) leaves the handler's running ``for`` loop over the old list undisturbed.

Where the handler cannot be found, nothing is removed and one warning says how to avoid the
double logging (``report_to="none"`` on the arguments, the names on ``TrainbusCallback``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from trainbus.orchestrator.registry import INTEGRATIONS, resolve_report_to

__all__ = ["calling_handler", "remove_integration_callbacks", "taken_over"]

log = structlog.get_logger(__name__)

_SEARCH_DEPTH = 6
"""Frames above the hook searched for the calling handler (the hook, ``call_event``, the
handler's ``on_<event>``, and room for a wrapper such as a subclass's ``super()`` call)."""


def taken_over(
    asked: str | Sequence[str] | None, hf_report_to: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """The integrations the bridge reports to, resolved by trainbus's registry.

    Args:
        asked: ``TrainbusCallback(report_to=...)``; names are checked strictly (an unknown name
            or a missing SDK is an error now, before training starts).
        hf_report_to: the trainer's ``args.report_to`` (transformers' normalised list), used when
            ``asked`` is ``None``; names trainbus has no sink for stay with transformers'
            callbacks, said once in a warning.
        env: the environment the sinks are configured from.
    """
    if asked is not None:
        return resolve_report_to(asked, env)
    names = list(hf_report_to)
    ours = [name for name in names if INTEGRATIONS.get(name)]
    left = [name for name in names if name not in ours]
    if left:
        log.warning(
            "bridge_leaves_integrations_to_transformers",
            integrations=left,
            reason="trainbus has no sink for them; transformers' own callbacks keep logging them",
        )
    return resolve_report_to(ours or "none", env)


def calling_handler() -> Any | None:
    """The ``transformers`` ``CallbackHandler`` dispatching the current hook, if one is."""
    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)  # the one way to see who called a hook
    for _ in range(_SEARCH_DEPTH):
        frame_or_none = frame.f_back
        if frame_or_none is None:
            return None
        frame = frame_or_none
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, CallbackHandler):
            return candidate
    return None


def remove_integration_callbacks(handler: Any, names: Sequence[str]) -> list[str]:
    """Take transformers' callbacks for ``names`` out of ``handler``; the class names removed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    classes = tuple(
        INTEGRATION_TO_CALLBACK[name] for name in names if name in INTEGRATION_TO_CALLBACK
    )
    if not classes:
        return []
    kept = [cb for cb in handler.callbacks if not isinstance(cb, classes)]
    removed = [type(cb).__name__ for cb in handler.callbacks if isinstance(cb, classes)]
    if removed:
        handler.callbacks = kept  # a new list: the running dispatch loop keeps the old one
    return removed
