"""Settings from CLI flags and ARCHLOOP_* environment variables, parsed once into a frozen dataclass.

Every field of a settings dataclass is both a flag (`--nats-url`) and an environment variable
(`ARCHLOOP_NATS_URL`); the flag wins over the variable, the variable over the default. A value that
does not convert or fails its field's check raises `SettingsError` naming the flag or variable it
came from; `load_settings_or_exit` turns that into one line on stderr and exit status 2.

A field declares its help text and an optional check with `setting(default, "help", check=...)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

ENV_PREFIX = "ARCHLOOP_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
EXIT_BAD_CONFIG = 2

T = TypeVar("T")
Check = Callable[[Any], str | None]


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message starts with its flag or variable."""


def setting(default: Any, help: str, *, check: Check | None = None) -> Any:
    """Declare a settings field: its default, its help text and an optional check returning an error."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# Checks: each returns None when the value is fine, else what is wrong with it.


def port_number(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"{value} is not a TCP port (0-65535; 0 picks a free one)"


def positive(value: float) -> str | None:
    return None if value > 0 else f"{value} must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"{value} must not be negative"


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


def nats_url(value: str) -> str | None:
    """An empty value disables NATS; otherwise nats://host:port (several may be comma-separated)."""
    for url in filter(None, value.split(",")):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            return f"{url!r} is not a NATS URL (expected nats://host:port)"
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return f"{url!r} has an invalid port"
    return None


def _convert(raw: str, annotation: Any) -> Any:
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{raw!r} is not a boolean (true/false)")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if annotation is str:
        return raw
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(_convert(item.strip(), item_type) for item in raw.split(",") if item.strip())
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"optional settings are not supported ({annotation}); use an empty default")
    raise TypeError(f"unsupported settings type {annotation}")


def load_settings(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
) -> T:
    """Build `cls` from flags (argv) and ARCHLOOP_* variables (environ); raise SettingsError."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    fields = dataclasses.fields(cast(Any, cls))  # cls is a settings dataclass
    for field in fields:
        default = field.default
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=f"{field.metadata.get('help', '')} [env {env_name(field.name)}; default {default!r}]",
        )
    namespace = parser.parse_args(argv)

    values: dict[str, Any] = {}
    for field in fields:
        flag_value = getattr(namespace, field.name)
        if flag_value is not None:
            raw, source = flag_value, flag_name(field.name)
        elif env_name(field.name) in environ:
            raw, source = environ[env_name(field.name)], env_name(field.name)
        else:
            values[field.name] = field.default
            continue
        try:
            value = _convert(raw, hints[field.name])
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}") from None
        check = field.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise SettingsError(f"{source}: {problem}")
        values[field.name] = value
    return cls(**values)


def load_settings_or_exit(cls: type[T], argv: Sequence[str] | None = None, **kwargs: Any) -> T:
    """`load_settings`, but a bad setting prints one line to stderr and exits with status 2."""
    try:
        return load_settings(cls, argv, **kwargs)
    except SettingsError as exc:
        prog = kwargs.get("prog") or os.path.basename(sys.argv[0])
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def redacted(settings: Any) -> dict[str, Any]:
    """The settings as a dict for the one start-up log line, with secrets masked."""
    out = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        secret = any(word in field.name for word in ("token", "password", "secret", "key"))
        out[field.name] = "***" if secret and value else value
    return out


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """What every ArchLoop gRPC service shares. A service subclasses this and adds its own fields."""

    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0 in containers)")
    port: int = setting(0, "gRPC port; 0 picks a free one", check=port_number)
    log_level: str = setting("info", "debug, info, warning or error", check=one_of(*LOG_LEVELS))
    log_format: str = setting(
        "auto", "auto (JSON unless a terminal), json or console", check=one_of(*LOG_FORMATS)
    )
    grace_period_seconds: float = setting(10.0, "time in-flight RPCs get after SIGTERM", check=non_negative)
    max_message_bytes: int = setting(
        64 * 1024 * 1024, "largest gRPC message accepted or sent", check=positive
    )
    max_connection_age_seconds: float = setting(
        60.0, "connections are closed after this long so clients rediscover replicas", check=positive
    )
    ready_file: str = setting("", "write {address, pid} here as JSON once the service is SERVING")
    tls_cert_file: str = setting(
        "", "PEM certificate (chain) to serve TLS instead of plaintext; needs --tls-key-file"
    )
    tls_key_file: str = setting("", "PEM private key of --tls-cert-file")
    tls_client_ca_file: str = setting(
        "", "with TLS: require client certificates signed by this PEM CA (mutual TLS)"
    )
    auth_token_file: str = setting(
        "",
        "a file holding a bearer token; when set, every RPC but the health check needs the metadata"
        " 'authorization: Bearer <token>' (else UNAUTHENTICATED)",
    )
