"""Settings of the controller service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, nats_url, port_number, setting


@dataclass(frozen=True)
class ControllerSettings(ServiceSettings):
    port: int = setting(50051, "gRPC port; 0 picks a free one", check=port_number)
    nats_url: str = setting(
        "", "NATS server(s) for cycle events, nats://host:port; empty = no events", check=nats_url
    )
