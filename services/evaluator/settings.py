"""Settings of the evaluator service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, port_number, positive, setting


@dataclass(frozen=True)
class EvaluatorSettings(ServiceSettings):
    port: int = setting(50053, "gRPC port; 0 picks a free one", check=port_number)
    max_concurrent_evaluations: int = setting(
        1, "evaluations this replica runs at once (one per GPU); beyond it RESOURCE_EXHAUSTED", check=positive
    )
    work_dir: str = setting("evaluator-jobs", "job directories (one per candidate, removed after)")
    data_dir: str = setting("data", "where torchvision datasets live (CIFAR-10, SVHN, MNIST, ...)")
    allow_download: bool = setting(False, "let torchvision download missing datasets")
    threads_per_evaluation: int = setting(1, "torch threads inside each sandboxed evaluation", check=positive)
    address_space_gib: int = setting(
        8, "RLIMIT_AS of a sandboxed evaluation (torch needs ≥ 4)", check=positive
    )
