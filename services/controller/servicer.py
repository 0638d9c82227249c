"""gRPC surface of the controller.

The experiment RPCs are not implemented yet (issue 8): each answers UNIMPLEMENTED through the
generated base class, never with placeholder data. What runs for real: health, reflection, and the
NATS connection with the ARCHLOOP stream when a NATS URL is configured (an unreachable URL stops
the start with exit status 2).
"""

from archloop.server import ServicerBase
from archloop.v1 import controller_pb2, controller_pb2_grpc
from services.controller.events import EventPublisher
from services.controller.settings import ControllerSettings


class ControllerServicer(ServicerBase, controller_pb2_grpc.ControllerServiceServicer):
    service_name = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name
    add_to_server = staticmethod(controller_pb2_grpc.add_ControllerServiceServicer_to_server)

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.events = EventPublisher(settings.nats_url) if settings.nats_url else None

    async def start(self) -> None:
        if self.events is not None:
            await self.events.connect()

    async def stop(self) -> None:
        if self.events is not None:
            await self.events.close()
