"""Entry point: parse settings, configure logging, then import the heavy parts and serve."""

from collections.abc import Sequence

from archloop.logs import configure_logging
from archloop.settings import load_settings_or_exit
from services.trainer.settings import TrainerSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings_or_exit(TrainerSettings, argv, prog="archloop-trainer")
    configure_logging("trainer", settings.log_level, settings.log_format)
    from archloop.server import run_service
    from services.trainer.servicer import TrainerServicer

    return run_service(settings, lambda: TrainerServicer(settings))
