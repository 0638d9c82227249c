"""Settings of the evaluator service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, non_negative, one_of, port_number, positive, setting
from services.evaluator.sandbox import SANDBOXES
from services.evaluator.watchdog import Deadlines


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
    sandbox: str = setting(
        "namespaces",
        "what isolates candidates: namespaces (network/mount namespaces, rlimits, a dedicated uid) or gvisor "
        "(all that inside gVisor's runsc); no fallback from one to the other",
        check=one_of(*SANDBOXES),
    )
    runsc_platform: str = setting("ptrace", "gVisor platform for --sandbox gvisor (ptrace works without KVM)")
    address_space_gib: int = setting(
        8, "RLIMIT_AS of a sandboxed evaluation (torch needs ≥ 4)", check=positive
    )
    instantiate_deadline_seconds: float = setting(
        Deadlines.instantiate_seconds,
        "module code + Net(...) must return within this (0: off)",
        check=non_negative,
    )
    forward_deadline_seconds: float = setting(
        Deadlines.forward_seconds,
        "the first forward pass must return within this (0: off)",
        check=non_negative,
    )
    setup_deadline_seconds: float = setting(
        Deadlines.setup_seconds, "train_setup must return within this (0: off)", check=non_negative
    )
    first_batch_deadline_seconds: float = setting(
        Deadlines.first_batch_seconds,
        "the first training batch must finish within this (0: off)",
        check=non_negative,
    )
    batch_deadline_seconds: float = setting(
        Deadlines.batch_seconds,
        "after the first batch, the longest wait for the next (training or accuracy pass; 0: off)",
        check=non_negative,
    )
    project_after_batches: int = setting(
        Deadlines.project_after_batches,
        "batches after the first before an epoch projected over the time limit ends the candidate (0: off)",
        check=non_negative,
    )

    def deadlines(self) -> Deadlines:
        return Deadlines(
            instantiate_seconds=self.instantiate_deadline_seconds,
            forward_seconds=self.forward_deadline_seconds,
            setup_seconds=self.setup_deadline_seconds,
            first_batch_seconds=self.first_batch_deadline_seconds,
            batch_seconds=self.batch_deadline_seconds,
            project_after_batches=self.project_after_batches,
        )
