"""gRPC surface of the novelty service.

No RPC is implemented yet (issue 4): each answers UNIMPLEMENTED through the generated base class,
never with placeholder data. The service still serves health and reflection for real.
"""

from archloop.server import ServicerBase
from archloop.v1 import novelty_pb2, novelty_pb2_grpc
from services.novelty.settings import NoveltySettings


class NoveltyServicer(ServicerBase, novelty_pb2_grpc.NoveltyServiceServicer):
    service_name = novelty_pb2.DESCRIPTOR.services_by_name["NoveltyService"].full_name
    add_to_server = staticmethod(novelty_pb2_grpc.add_NoveltyServiceServicer_to_server)

    def __init__(self, settings: NoveltySettings) -> None:
        self.settings = settings
