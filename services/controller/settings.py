"""Settings of the controller service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, nats_url, non_negative, port_number, positive, setting
from services.controller.evaluators import parse_target


def evaluator_address(value: str) -> str | None:
    try:
        parse_target(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ControllerSettings(ServiceSettings):
    port: int = setting(50051, "gRPC port; 0 picks a free one", check=port_number)
    nats_url: str = setting(
        "", "NATS server(s) for cycle events, nats://host:port; empty = no events", check=nats_url
    )
    state_dir: str = setting("controller-state", "the ledger (ledger.sqlite3), training sets and reports")
    corpus_dir: str = setting("", "the LEMUR corpus folder ('' = $ARCHLOOP_HOME/corpus/lemur-v3)")
    generator_addr: str = setting("127.0.0.1:50052", "generator service (host:port or dns:///host:port)")
    evaluator_addr: str = setting(
        "127.0.0.1:50053",
        "evaluator: host:port (one replica) or dns:///<headless service>:port (every ready replica,"
        " resolved again every --evaluator-refresh-seconds)",
        check=evaluator_address,
    )
    novelty_addr: str = setting("127.0.0.1:50054", "novelty service")
    novelty_tls_ca_file: str = setting("", "PEM CA of a novelty service that serves TLS ('' = plaintext)")
    novelty_token_file: str = setting(
        "", "a file holding the novelty service's bearer token, if it wants one"
    )
    trainer_addr: str = setting("127.0.0.1:50055", "trainer service")
    evaluator_refresh_seconds: float = setting(
        10.0,
        "how often a dns:/// evaluator address is resolved again (new replicas take work after it)",
        check=positive,
    )
    evaluation_concurrency: int = setting(
        0,
        "most evaluations in flight at once (0: the sum of the replicas' reported capacity)",
        check=non_negative,
    )
    training_sets_dir: str = setting(
        "",
        "where each cycle's fine-tuning set is written; the trainer must read the same path"
        " ('' = <state_dir>/experiments; on Kubernetes the shared artifacts volume)",
    )
    retry_budget_seconds: float = setting(
        600.0,
        "how long a call to a service that is down is retried before the experiment fails",
        check=positive,
    )
    progress_deadline_seconds: float = setting(
        900.0,
        "a generation stream or a fine-tune watch that delivers nothing this long is stalled: cancelled and"
        " asked again (0: no deadline)",
        check=non_negative,
    )
    resume_on_start: bool = setting(True, "continue experiments that were running when the service stopped")
