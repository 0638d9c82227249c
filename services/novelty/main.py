"""Entry point: parse settings, configure logging, then import the heavy parts and serve."""

from collections.abc import Sequence

from archloop.logs import configure_logging
from archloop.settings import load_settings_or_exit
from services.novelty.settings import NoveltySettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings_or_exit(NoveltySettings, argv, prog="archloop-novelty")
    configure_logging("novelty", settings.log_level, settings.log_format)
    from archloop.server import run_service
    from services.novelty.servicer import NoveltyServicer

    return run_service(settings, lambda: NoveltyServicer(settings))
