"""Typed settings that validate and describe themselves: the fields of every method's config and of the pipeline's.

Each field is declared once, with :func:`setting`: its default, a one-line help and its allowed values (a
:class:`Real`, :class:`Integer`, :class:`Choice` or :class:`Flag`). :class:`Settings` checks every field on
construction, and the command line builds its flags from the same declarations (:func:`describe`), so a new
setting is one line in one place.

Example
-------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True, kw_only=True)
... class Example(Settings):
...     rate: float = setting(0.1, "how fast", Real(0.0, 1.0, low_open=True))
>>> Example(rate=0.5).rate
0.5
>>> Example(rate=2.0)
Traceback (most recent call last):
...
ValueError: rate must be in (0.0, 1.0]; got 2.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bayescompress._validation import check_choice, check_in_range


@dataclass(frozen=True)
class Real:
    """A real number in [low, high] (either end open with ``low_open`` / ``high_open``); ``optional`` also
    allows None, whose meaning the field's help states."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        check_in_range(name, value, self.low, self.high, low_inclusive=not self.low_open,
                       high_inclusive=not self.high_open)
        if isinstance(value, float) and math.isinf(value):  # nothing means anything at infinity: it would fail mid-run
            raise ValueError(f"{name} must be finite; got {value!r}")

    def parse(self, text: str) -> float | None:
        return None if self.optional and text.lower() == "none" else float(text)

    def describe(self) -> str:
        if math.isinf(self.high):
            text = f"{'>' if self.low_open else '>='} {self.low:g}" if not math.isinf(self.low) else "any number"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return text + (", or none" if self.optional else "")


@dataclass(frozen=True)
class Integer:
    """An integer in [low, high] (``high`` none: no upper end); ``optional`` also allows None, whose meaning the
    field's help states."""

    low: int = 0
    optional: bool = False
    high: int | None = None

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if (isinstance(value, bool) or not isinstance(value, int) or value < self.low
                or (self.high is not None and value > self.high)):
            raise ValueError(f"{name} must be {self.describe()}; got {value!r}")

    def parse(self, text: str) -> int | None:
        if self.optional and text.lower() == "none":
            return None
        try:
            return int(text)
        except ValueError:  # 1e4, 150000.0: a whole number written as a float
            number = float(text)
            if not number.is_integer():
                raise
            return int(number)

    def describe(self) -> str:
        span = f">= {self.low}" if self.high is None else f"in [{self.low}, {self.high}]"
        return f"an integer {span}" + (", or none" if self.optional else "")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    def check(self, name: str, value: Any) -> None:
        check_choice(name, value, self.options)

    def parse(self, text: str) -> str:
        return text

    def describe(self) -> str:
        return "one of " + ", ".join(self.options)


@dataclass(frozen=True)
class Flag:
    """True or False."""

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")

    def parse(self, text: str) -> bool:
        return {"true": True, "false": False}[text.lower()]

    def describe(self) -> str:
        return "on or off"


@dataclass(frozen=True)
class PerLayer:
    """Values per layer, written ``name=value,name=value`` (empty: none), each allowed by ``each``; kept as that
    text in the config (so it stays hashable and JSON-friendly), read with :func:`per_layer`."""

    each: Real

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text like 'fc1=0.05,fc2=0.2'; got {value!r}")
        for layer, number in per_layer(value, name).items():
            self.each.check(f"{name}[{layer}]", number)

    def parse(self, text: str) -> str:
        return text

    def describe(self) -> str:
        return f"layer=value pairs, comma-separated (each {self.each.describe()}), or empty"


def per_layer(text: str, name: str = "value") -> dict[str, float]:
    """``"fc1=0.05, fc2=0.2"`` -> {"fc1": 0.05, "fc2": 0.2}; a clear error naming ``name`` otherwise."""
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        layer, _, number = (part.strip() for part in item.partition("="))
        try:
            if not layer:
                raise ValueError
            values[layer] = float(number)
        except ValueError:
            raise ValueError(f"{name} takes layer=value pairs like 'fc1=0.05,fc2=0.2'; got {item!r}") from None
    return values


Allowed = Real | Integer | Choice | Flag | PerLayer


def setting(default: Any, help: str, allowed: Allowed) -> Any:
    """A dataclass field with its default, its help (one line, for docs and ``--help``) and its allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "allowed": allowed})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of the frozen settings dataclasses: every field declared with :func:`setting` is checked on
    construction, so a bad value fails before any work, naming the field and what it allows."""

    def __post_init__(self) -> None:
        for info in dataclasses.fields(self):
            allowed = info.metadata.get("allowed")
            if allowed is not None:
                allowed.check(info.name, getattr(self, info.name))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(info.name for info in dataclasses.fields(cls))

    @classmethod
    def override(cls, name: str, default: Any) -> Any:
        """The field ``name`` of this class with another default and the same help and allowed values: how a
        subclass states its own recipe for an inherited setting."""
        return dataclasses.field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass(frozen=True)
class SettingInfo:
    """What the command line and the docs show of one setting."""

    name: str
    default: Any
    help: str
    allowed: Allowed

    @property
    def parse(self) -> Callable[[str], Any]:
        return self.allowed.parse


def show(value: Any) -> str:
    """A setting's value as the command line and the docs write it: none, 0.001, 12, grid, on, (empty)."""
    if isinstance(value, bool):  # a switch: --x / --no-x
        return "on" if value else "off"
    if value == "":
        return "(empty)"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def describe(settings: type[Settings]) -> list[SettingInfo]:
    """Every field of ``settings`` with its default, help and allowed values, in declaration order."""
    return [SettingInfo(info.name, info.default, info.metadata["help"], info.metadata["allowed"])
            for info in dataclasses.fields(settings) if "allowed" in info.metadata]


__all__ = ["Choice", "Flag", "Integer", "PerLayer", "Real", "SettingInfo", "Settings", "describe", "per_layer", "setting",
           "show"]
