"""The event union: complete, uniquely tagged, and lossless through msgpack and JSON."""

from __future__ import annotations

import typing

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import trainbus.bus._events as events_module
from trainbus.bus._events import (
    ALL_EVENT_TYPES,
    HF_EVENT_TYPES,
    Event,
    EventBase,
    RunStarted,
    TensorHistogram,
    TrialInfo,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    hook_name,
)


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found.add(sub)
        found |= _all_subclasses(sub)
    return found


def test_union_lists_every_event_type() -> None:
    """Every EventBase subclass defined in bus.events is in the Event union and ALL_EVENT_TYPES."""
    defined = {c for c in _all_subclasses(EventBase) if c.__module__ == events_module.__name__}
    assert defined == set(typing.get_args(Event))
    assert defined == set(ALL_EVENT_TYPES)
    assert len(ALL_EVENT_TYPES) == len(set(ALL_EVENT_TYPES))


def test_tags_are_unique_snake_case_hook_names() -> None:
    """Tags are distinct, and each Hugging Face event's tag names its on_<tag> hook."""
    tags = [t.__struct_config__.tag for t in ALL_EVENT_TYPES]
    assert len(tags) == len(set(tags))
    for event_type in ALL_EVENT_TYPES:
        tag = event_type.__struct_config__.tag
        assert isinstance(tag, str) and tag == tag.lower() and " " not in tag
    assert len(HF_EVENT_TYPES) == 16
    for event_type in HF_EVENT_TYPES:
        assert hook_name(event_type) == "on_" + str(event_type.__struct_config__.tag)


_finite = st.floats(allow_nan=False, allow_infinity=False)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _finite, st.text())
_metrics = st.dictionaries(st.text(max_size=20), _scalar, max_size=5)
_json_value = st.recursive(
    _scalar, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3)
)

_histogram = st.builds(
    TensorHistogram, low=_finite, high=_finite, counts=st.lists(st.integers(0, 2**40), max_size=64)
)

_trial = st.builds(
    TrialInfo,
    search=st.text(),
    search_id=st.text(),
    number=st.integers(0, 2**31),
    name=st.text(),
    params=st.dictionaries(st.text(max_size=10), _scalar, max_size=4),
)


def _event_strategy(event_type: type[EventBase]) -> st.SearchStrategy[EventBase]:
    envelope = {
        "run_id": st.text(min_size=1, max_size=30),
        "seq": st.integers(0, 2**63 - 1),
        "time": _finite,
        "global_step": st.integers(0, 2**40),
        "epoch": _finite,
        "rank": st.integers(0, 1024),
    }
    extra: dict[str, st.SearchStrategy[object]] = {}
    for field in msgspec.structs.fields(event_type):
        if field.name in envelope:
            continue
        if field.name in ("logs", "metrics"):
            extra[field.name] = _metrics
        elif field.name in ("config", "hparams"):
            extra[field.name] = st.dictionaries(st.text(max_size=10), _json_value, max_size=4)
        elif field.name == "kind":
            extra[field.name] = st.sampled_from(["checkpoint", "model", "file", "directory"])
        elif field.name == "source":
            extra[field.name] = st.sampled_from(["gradients", "parameters"])
        elif field.name == "histograms":
            extra[field.name] = st.dictionaries(st.text(max_size=20), _histogram, max_size=3)
        elif field.name == "status":
            extra[field.name] = st.sampled_from(["completed", "stopped", "failed", "killed"])
        elif field.type is int:
            extra[field.name] = st.integers(0, 2**31)
        elif field.type is bool:
            extra[field.name] = st.booleans()
        elif field.name == "trial":
            extra[field.name] = st.none() | _trial
        elif field.name == "checkpoint_dir" or field.name == "error":
            extra[field.name] = st.none() | st.text()
        else:
            extra[field.name] = st.text()
    return st.builds(event_type, **envelope, **extra)


any_event = st.one_of([_event_strategy(t) for t in ALL_EVENT_TYPES])


@settings(deadline=None)
@given(any_event)
def test_every_event_round_trips_through_msgpack(event: Event) -> None:
    """Any event, encoded as msgpack (the journal's payload) and decoded, comes back equal."""
    assert decode_msgpack(encode_msgpack(event)) == event


@settings(deadline=None)
@given(any_event)
def test_every_event_round_trips_through_json(event: Event) -> None:
    """Any event with finite floats, encoded as JSON and decoded, comes back equal."""
    assert decode_json(encode_json(event)) == event


def test_a_run_started_written_before_trials_existed_still_decodes() -> None:
    """A journal written before ``RunStarted.trial`` existed decodes, with no trial."""
    old = b'{"type":"run_started","run_id":"r","seq":0,"time":1.0,"run_name":"x","continued":false}'
    event = decode_json(old)
    assert isinstance(event, RunStarted) and event.trial is None and event.run_name == "x"
    card = TrialInfo(search="s", search_id="i", number=3, name="run-3", params={"lr": 0.1})
    again = decode_msgpack(encode_msgpack(RunStarted(run_id="r", seq=0, time=1.0, trial=card)))
    assert isinstance(again, RunStarted) and again.trial == card
