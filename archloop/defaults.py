"""The contracts' convention for settings messages: a zero (or empty) field means "the default", unless the
field is `optional` (explicit presence) and set."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def nonzero_over(defaults: T, message: Any, *, skip: tuple[str, ...] = ()) -> T:
    """`defaults` with every field the message sets to a non-zero value replaced by that value.

    A field with explicit presence (`optional` in the proto) is taken whenever it is set, zero
    included: that is how a client says 0 where 0 is meaningful (no dropout, greedy decoding). Fields
    of the dataclass that the message lacks, or that are named in `skip` (converted by the caller),
    keep their defaults."""
    fields = message.DESCRIPTOR.fields_by_name
    given = {
        f.name: getattr(message, f.name)
        for f in dataclasses.fields(defaults)  # type: ignore[arg-type]
        if f.name not in skip and f.name in fields and _given(message, fields[f.name])
    }
    return dataclasses.replace(defaults, **given)  # type: ignore[type-var]


def _given(message: Any, field: Any) -> bool:
    """A scalar with explicit presence: set; any other field: non-zero (a message: always)."""
    if field.has_presence and field.message_type is None:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))
