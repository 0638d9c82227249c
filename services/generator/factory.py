"""The backend the settings ask for (`--backend local | tgi | replay`)."""

from __future__ import annotations

from services.generator.backend import Backend
from services.generator.settings import GeneratorSettings


def make_backend(settings: GeneratorSettings) -> Backend:
    """Built here, started by the servicer (`Backend.start`); each backend's module is imported only
    when chosen (local pulls in torch, tgi an HTTP pool)."""
    if settings.backend == "local":
        from services.generator.local import LocalBackend

        return LocalBackend(settings.model, settings.device, settings.threads, settings.batch_size)
    if settings.backend == "replay":
        from services.generator.replay import ReplayBackend

        return ReplayBackend(settings.replay_dir, settings.replay_seconds_per_candidate, settings.batch_size)
    from services.generator.tgi import TGIBackend, TGILauncher

    launcher = None
    if settings.tgi_launcher:
        launcher = TGILauncher(
            settings.tgi_launcher,
            settings.tgi_model_id or settings.model,
            settings.tgi_url,
            settings.tgi_startup_seconds,
        )
    return TGIBackend(
        settings.tgi_url,
        settings.model,
        settings.tgi_timeout_seconds,
        settings.tgi_concurrency,
        launcher,
        model_id=settings.model or settings.tgi_model_id,
    )
