"""Entry point: parse settings, configure logging, then import the heavy parts and serve."""

from collections.abc import Sequence

from archloop.logs import configure_logging
from archloop.settings import load_settings_or_exit
from services.generator.settings import GeneratorSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings_or_exit(GeneratorSettings, argv, prog="archloop-generator")
    configure_logging("generator", settings.log_level, settings.log_format)
    from archloop.server import run_service
    from services.generator.servicer import GeneratorServicer

    return run_service(settings, lambda: GeneratorServicer(settings))
