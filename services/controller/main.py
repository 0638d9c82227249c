"""Entry point: parse settings, configure logging, then import the heavy parts and serve."""

from collections.abc import Sequence

from archloop.logs import configure_logging
from archloop.settings import load_settings_or_exit
from services.controller.settings import ControllerSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings_or_exit(ControllerSettings, argv, prog="archloop-controller")
    configure_logging("controller", settings.log_level, settings.log_format)
    from archloop.server import run_service
    from services.controller.servicer import ControllerServicer

    return run_service(settings, lambda: ControllerServicer(settings))
