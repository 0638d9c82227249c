"""The contracts' convention for settings messages: a zero (or empty) field means "the default"."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def nonzero_over(defaults: T, message: Any, *, skip: tuple[str, ...] = ()) -> T:
    """`defaults` with every field the message sets to a non-zero value replaced by that value.

    Fields of the dataclass that the message lacks, or that are named in `skip` (converted by the
    caller), keep their defaults."""
    given = {
        f.name: getattr(message, f.name)
        for f in dataclasses.fields(defaults)  # type: ignore[arg-type]
        if f.name not in skip and hasattr(message, f.name) and getattr(message, f.name)
    }
    return dataclasses.replace(defaults, **given)  # type: ignore[type-var]
