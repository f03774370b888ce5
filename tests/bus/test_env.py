"""The one environment reader (``trainbus.bus._env``): spellings and error messages."""

from __future__ import annotations

import pytest

from trainbus.bus._env import env_flag, env_int, env_str
from trainbus.bus._errors import ConfigurationError

TRUE_SPELLINGS = ["1", "true", "TRUE", "True", "yes", "YES", "on", "ON", " 1 "]
FALSE_SPELLINGS = ["0", "false", "FALSE", "no", "NO", "off", "OFF", "", "  "]


@pytest.mark.parametrize("raw", TRUE_SPELLINGS)
def test_true_spellings_read_true(raw: str) -> None:
    """Hugging Face's true values, in any case and with blanks around them, mean true."""
    assert env_flag({"X": raw}, "X") is True


@pytest.mark.parametrize("raw", FALSE_SPELLINGS)
def test_false_spellings_read_false(raw: str) -> None:
    """Their false counterparts and an empty value mean false, whatever the default."""
    assert env_flag({"X": raw}, "X", default=True) is False


def test_an_unset_flag_takes_the_default() -> None:
    """Unset is not the same as empty: it gives the caller's default."""
    assert env_flag({}, "X") is False
    assert env_flag({}, "X", default=True) is True


def test_a_bad_flag_names_the_variable_the_value_and_the_spellings() -> None:
    """The error is one line saying which variable, what it held and what was expected."""
    with pytest.raises(ConfigurationError) as info:
        env_flag({"TRAINBUS_SINK_PROCESS": "maybe"}, "TRAINBUS_SINK_PROCESS")
    assert str(info.value) == (
        "TRAINBUS_SINK_PROCESS='maybe' is not a boolean; "
        "expected one of 1/0/true/false/yes/no/on/off"
    )


def test_whole_numbers_are_read_and_bad_ones_named() -> None:
    """Integers are stripped and parsed; a word or a value below the minimum is refused."""
    assert env_int({"N": " 12 "}, "N") == 12
    assert env_int({"N": ""}, "N") is None
    assert env_int({}, "N") is None
    with pytest.raises(ConfigurationError, match=r"^RANK='one' is not a whole number; expected"):
        env_int({"RANK": "one"}, "RANK")
    with pytest.raises(ConfigurationError, match=r"^TIMEOUT='0' is too small; expected .*>= 1"):
        env_int({"TIMEOUT": "0"}, "TIMEOUT", minimum=1)


def test_text_is_stripped_and_empty_means_unset() -> None:
    """A blank value is the same as no value."""
    assert env_str({"U": "  http://x  "}, "U") == "http://x"
    assert env_str({"U": "   "}, "U") is None
