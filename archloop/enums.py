"""`short_name`: the one way a proto enum value becomes text (the controller, the dashboard, the report)."""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


def short_name(enum_type: EnumTypeWrapper, value: int) -> str:
    """A proto enum value's name without its type's prefix (every enum of ours names its value 0
    `<PREFIX>_UNSPECIFIED`): EXPERIMENT_STATE_RUNNING → RUNNING, EVALUATION_STATUS_OK → OK."""
    return enum_type.Name(value).removeprefix(enum_type.Name(0).removesuffix("UNSPECIFIED"))
