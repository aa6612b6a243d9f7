"""Range checks shared by every typed config: one message format, naming the field and the allowed range."""

from __future__ import annotations

import math


def check_in_range(
    field: str,
    value: float,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``field`` and the interval unless ``low <(=) value <(=) high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number; got {value!r}")
    ok_low = value >= low if low_inclusive else value > low
    ok_high = value <= high if high_inclusive else value < high
    if not (ok_low and ok_high) or math.isnan(value):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(f"{field} must be in {left}{low}, {high}{right}; got {value!r}")


def check_probability(field: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 < value < 1`` (a probability that may be neither certain nor impossible)."""
    check_in_range(field, value, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def check_positive(field: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value > 0``."""
    check_in_range(field, value, 0.0, math.inf, low_inclusive=False)


def check_positive_int(field: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1; got {value!r}")


def check_non_negative_int(field: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be an integer >= 0; got {value!r}")


def check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_module(field: str, value: object, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``nn.Module`` instance (``what`` says which network is meant);
    a class given for it is named as such."""
    from torch import nn  # here: the other checks need no torch

    if isinstance(value, type):
        raise ValueError(f"{field} is the class {value.__name__}; give {what} built from it ({value.__name__}(...))")
    if not isinstance(value, nn.Module):
        raise ValueError(f"{field} must be an nn.Module ({what}); got {type(value).__name__}")


def check_device(field: str, value: str) -> None:
    """Raise ``ValueError`` unless ``value`` names a device this machine has ("cpu", "cuda", "cuda:N")."""
    import torch  # here: the other checks need no torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{field} must be a device such as 'cpu', 'cuda' or 'cuda:0'; got {value!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{field} is {value!r} but this machine has no CUDA device (torch.cuda.is_available() "
                             "is False); use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{field} is {value!r} but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    elif device.type != "cpu":
        raise ValueError(f"{field} must be 'cpu', 'cuda' or 'cuda:N'; got {value!r}")
