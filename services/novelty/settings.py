"""Settings of the novelty service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, port_number, setting


@dataclass(frozen=True)
class NoveltySettings(ServiceSettings):
    port: int = setting(50054, "gRPC port; 0 picks a free one", check=port_number)
