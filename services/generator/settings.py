"""Settings of the generator service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, non_negative, one_of, port_number, positive, setting

BACKENDS = ("local", "tgi", "replay")


@dataclass(frozen=True)
class GeneratorSettings(ServiceSettings):
    port: int = setting(50052, "gRPC port; 0 picks a free one", check=port_number)
    backend: str = setting(
        "local",
        "local (transformers in-process), tgi (a TGI server) or replay (programs from --replay-dir)",
        check=one_of(*BACKENDS),
    )
    model: str = setting(
        "",
        "local: base model folder, smollm2-135m-instruct, or a hub name ('' = the packaged tiny model); "
        "tgi: shown as model_id",
    )
    device: str = setting("auto", "local: cpu, cuda or auto", check=one_of("auto", "cpu", "cuda"))
    threads: int = setting(0, "local: torch threads (0: torch's default)", check=non_negative)
    batch_size: int = setting(
        24,
        "local: candidates sampled together (one batch with a KV cache); on 2 CPU cores a batch of 24 "
        "samples 1.28x the tokens/s of 8 (bench/speed_variants.py)",
        check=positive,
    )
    max_candidates: int = setting(256, "most candidates one request may ask for", check=positive)
    adapters_dir: str = setting(
        "", "adapters named in requests without a path are looked up under it (<dir>/<name>/)"
    )
    replay_dir: str = setting(
        "", "replay: a folder of .py programs; candidate seeds pick them in name order (no model)"
    )
    replay_seconds_per_candidate: float = setting(
        0.0, "replay: wait this long per candidate, to pace a run like a model would", check=non_negative
    )
    factors_file: str = setting("", "factor list for factor mode (YAML); '' = the packaged list")
    tgi_url: str = setting("http://127.0.0.1:8080", "tgi: the server's base URL")
    tgi_timeout_seconds: float = setting(600.0, "tgi: time limit of one generation request", check=positive)
    tgi_concurrency: int = setting(8, "tgi: requests in flight at once (TGI batches them)", check=positive)
    tgi_launcher: str = setting(
        "",
        "tgi managed mode: the launcher command (e.g. text-generation-launcher); the generator starts it "
        "with --model-id, --port and --lora-adapters and restarts it when an adapter is added",
    )
    tgi_model_id: str = setting("", "tgi managed mode: --model-id given to the launcher")
    tgi_startup_seconds: float = setting(
        900.0, "tgi managed mode: how long a (re)start may take", check=positive
    )
