"""Entry point: parse settings, configure logging, then import the heavy parts and serve."""

from collections.abc import Sequence

from archloop.logs import configure_logging
from archloop.settings import load_settings_or_exit
from services.evaluator.settings import EvaluatorSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings_or_exit(EvaluatorSettings, argv, prog="archloop-evaluator")
    configure_logging("evaluator", settings.log_level, settings.log_format)
    from archloop.server import run_service
    from services.evaluator.servicer import EvaluatorServicer

    return run_service(settings, lambda: EvaluatorServicer(settings))
