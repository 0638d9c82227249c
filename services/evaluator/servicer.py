"""gRPC surface of the evaluator service.

No RPC is implemented yet (issue 5): each answers UNIMPLEMENTED through the generated base class,
never with placeholder data. The service still serves health and reflection for real.
"""

from archloop.server import ServicerBase
from archloop.v1 import evaluator_pb2, evaluator_pb2_grpc
from services.evaluator.settings import EvaluatorSettings


class EvaluatorServicer(ServicerBase, evaluator_pb2_grpc.EvaluatorServiceServicer):
    service_name = evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name
    add_to_server = staticmethod(evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server)

    def __init__(self, settings: EvaluatorSettings) -> None:
        self.settings = settings
