"""What the journal of a rank other than world rank zero keeps: by need, not by default.

Under ``torchrun`` every rank publishes the same stream of events, and only world rank zero runs
the remote sinks, so a full journal on every rank is the same record written ``world_size``
times. ``TRAINBUS_RANK_JOURNAL`` (or ``Orchestrator(rank_journal=...)``) says what the other ranks
keep:

* ``errors`` (the default): only the rank's own failure, the ``RunFinished`` of a call that
  ``failed`` or was ``killed``, with its error text. A rank that ends well journals nothing;
  its ``run.json`` still records its status and error either way.
* ``none``: no journal at all; ``run.json`` alone.
* ``full``: every event, as on rank zero.

A rank that runs sinks of its own (a user sink with ``world_rank_zero_only=False``) journals in
full whatever the setting: a sink that falls behind reads the events back from the journal, and
``trainbus sync`` replays it. World rank zero always journals in full.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Literal, cast, get_args

from trainbus.bus._env import env_choice
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Event, RunFinished

__all__ = ["ENV_VAR", "RankJournal", "journal_filter", "rank_journal_from"]

RankJournal = Literal["full", "errors", "none"]
ENV_VAR: Final = "TRAINBUS_RANK_JOURNAL"
_DEFAULT: Final[RankJournal] = "errors"


def rank_journal_from(env: Mapping[str, str], wanted: str | None) -> RankJournal:
    """The setting in use: ``wanted`` (the orchestrator's argument), else
    ``$TRAINBUS_RANK_JOURNAL``, else ``errors``.

    Raises:
        ConfigurationError: either names no setting; the message names the argument or variable.
    """
    choices = get_args(RankJournal)
    if wanted is None:
        return cast(RankJournal, env_choice(env, ENV_VAR, choices, _DEFAULT))
    if wanted not in choices:
        raise ConfigurationError(f"rank_journal must be one of {'/'.join(choices)}, got {wanted!r}")
    return cast(RankJournal, wanted)


def _is_failure(event: Event) -> bool:
    return isinstance(event, RunFinished) and event.status in ("failed", "killed")


def journal_filter(
    setting: RankJournal, *, rank: int, has_sinks: bool
) -> tuple[bool, Callable[[Event], bool] | None]:
    """Whether this rank keeps a journal, and the filter its bus applies (``None``: every event).

    Args:
        setting: what the other ranks keep (see the module docstring).
        rank: this process's world rank; rank zero keeps everything.
        has_sinks: whether the rank runs sinks of its own (in process or in the sink process).
    """
    if rank == 0 or has_sinks or setting == "full":
        return True, None
    if setting == "none":
        return False, None
    return True, _is_failure
