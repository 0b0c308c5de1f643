"""wciaudit.setting: a field's check runs from its metadata with the "<name> must be ..."
message, None is "unset" where the default is None, and the docstring lists every field."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

import pytest

from wciaudit.errors import ConfigError
from wciaudit.setting import (
    Cli,
    IntRange,
    IsBool,
    Matches,
    OneOf,
    OpenInterval,
    Parsed,
    apply_checks,
    cli_of,
    document,
    help_of,
    setting,
)


class Colour(str, Enum):
    red = "red"
    blue = "blue"


@document
@dataclass(frozen=True)
class Knobs:
    """Knobs of a test."""

    steps: int = setting(10, help="Steps K.", check=IntRange(1, 100))
    tol: float = setting(0.05, help="Target error.", check=OpenInterval(0, 1))
    colour: Colour = setting(Colour.red, help="A colour.", check=OneOf(Colour))
    device: str = setting("cpu", help="Device.", check=Matches(r"cpu|cuda(:\d+)?", "cpu or cuda"))
    limit: int | None = setting(None, help="A cap.", check=IntRange(1, 9))
    twice: float = setting(1.0, help="Doubled.", check=Parsed(lambda v: 2 * float(v), "numbers"))
    flag: bool = setting(False, help="A flag.", check=IsBool(), cli=None)
    plain: int = 3

    def __post_init__(self) -> None:
        apply_checks(self)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer in [1, 100], got 0"),
        ({"steps": True}, "steps must be an integer in [1, 100], got True"),
        ({"steps": 2.0}, "steps must be an integer in [1, 100], got 2.0"),
        ({"tol": 1.0}, "tol must be in (0, 1), got 1.0"),
        ({"colour": "green"}, "colour must be one of red, blue, got 'green'"),
        ({"device": "tpu"}, "device must be cpu or cuda, got 'tpu'"),
        ({"limit": 10}, "limit must be an integer in [1, 9], got 10"),
        ({"flag": 1}, "flag must be True or False, got 1"),
    ],
)
def test_a_refused_value_names_the_field_and_what_is_allowed(kwargs, message) -> None:
    with pytest.raises(ConfigError) as info:
        Knobs(**kwargs)
    assert str(info.value) == message


def test_checks_normalise_and_none_is_unset_where_the_default_is_none() -> None:
    knobs = Knobs(colour="blue", device="cuda:1", limit=None, twice="3")
    assert knobs.colour is Colour.blue and knobs.device == "cuda:1"
    assert knobs.limit is None and knobs.twice == 6.0
    with pytest.raises(ConfigError, match="steps must be"):
        Knobs(steps=None)  # type: ignore[arg-type]  # the default is not None: None is refused


def test_the_docstring_lists_every_field_with_help_default_and_range() -> None:
    doc = " ".join(Knobs.__doc__.split())
    assert doc.startswith("Knobs of a test. Attributes:")
    assert "steps: Steps K. (default 10; an integer in [1, 100])" in doc
    assert "colour: A colour. (default red; one of red, blue)" in doc
    assert "flag: A flag. (default False; True or False; no command-line option)" in doc
    for f in fields(Knobs):
        assert f" {f.name}: " in doc


def test_metadata_readers_and_option_names() -> None:
    by_name = {f.name: f for f in fields(Knobs)}
    assert help_of(by_name["steps"]) == "Steps K." and help_of(by_name["plain"]) == ""
    assert cli_of(by_name["flag"]) is None and cli_of(by_name["plain"]) is None
    assert Cli().names("step_size", is_bool=False) == ("--step-size",)
    assert Cli().names("attack_spread", is_bool=True) == ("--attack-spread/--no-attack-spread",)
    assert Cli(flags=("--weights-only",)).names("weights_only", is_bool=True) == ("--weights-only",)
