"""gRPC surface of the generator service.

No RPC is implemented yet (issue 7): each answers UNIMPLEMENTED through the generated base class,
never with placeholder data. The service still serves health and reflection for real.
"""

from archloop.server import ServicerBase
from archloop.v1 import generator_pb2, generator_pb2_grpc
from services.generator.settings import GeneratorSettings


class GeneratorServicer(ServicerBase, generator_pb2_grpc.GeneratorServiceServicer):
    service_name = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
    add_to_server = staticmethod(generator_pb2_grpc.add_GeneratorServiceServicer_to_server)

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
