"""The contracts in protos/: generated stubs are current and the house conventions hold."""

from __future__ import annotations

import filecmp
import runpy
from pathlib import Path

import pytest

from archloop.v1 import (
    common_pb2,
    controller_pb2,
    evaluator_pb2,
    events_pb2,
    generator_pb2,
    novelty_pb2,
    trainer_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
MODULES = [common_pb2, controller_pb2, evaluator_pb2, events_pb2, generator_pb2, novelty_pb2, trainer_pb2]
SERVICE_MODULES = [controller_pb2, evaluator_pb2, generator_pb2, novelty_pb2, trainer_pb2]


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    generate = runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate"]
    generate(tmp_path)
    fresh = tmp_path / "archloop" / "v1"
    installed = ROOT / "archloop" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    _match, mismatch, errors = filecmp.cmpfiles(fresh, installed, names, shallow=False)
    assert not mismatch and not errors, f"stale stubs, run `make proto`: {mismatch + errors}"


def test_one_service_per_file_named_service() -> None:
    for module in SERVICE_MODULES:
        services = list(module.DESCRIPTOR.services_by_name.values())
        assert len(services) == 1, module.__name__
        assert services[0].name.endswith("Service")
        assert module.DESCRIPTOR.package == "archloop.v1"


@pytest.mark.parametrize("module", SERVICE_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_rpc_has_its_own_request_and_response(module) -> None:
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request", method.full_name
            assert method.output_type.name == f"{method.name}Response", method.full_name


def _all_enums(module):
    yield from module.DESCRIPTOR.enum_types_by_name.values()
    for message in module.DESCRIPTOR.message_types_by_name.values():
        yield from message.enum_types


def test_enums_start_with_unspecified_zero() -> None:
    import re

    for module in MODULES:
        for enum in _all_enums(module):
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
            assert enum.values[0].number == 0
            assert enum.values[0].name == f"{prefix}_UNSPECIFIED", enum.full_name
            for value in enum.values:
                assert value.name.startswith(prefix + "_"), value.name


def test_event_payload_covers_every_transition() -> None:
    payloads = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert payloads == {
        "experiment_started",
        "experiment_completed",
        "experiment_failed",
        "cycle_started",
        "cycle_generated",
        "cycle_evaluated",
        "cycle_audited",
        "cycle_filtered",
        "cycle_fine_tuned",
        "cycle_completed",
    }
