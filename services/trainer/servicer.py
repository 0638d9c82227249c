"""gRPC surface of the trainer service.

No RPC is implemented yet (issue 6): each answers UNIMPLEMENTED through the generated base class,
never with placeholder data. The service still serves health and reflection for real.
"""

from archloop.server import ServicerBase
from archloop.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.settings import TrainerSettings


class TrainerServicer(ServicerBase, trainer_pb2_grpc.TrainerServiceServicer):
    service_name = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
    add_to_server = staticmethod(trainer_pb2_grpc.add_TrainerServiceServicer_to_server)

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
