"""gRPC surface of the generator: validate → adapter check → candidates streamed as batches finish.

The backend (services.generator.backend.Backend, built by services.generator.factory) blocks (torch,
HTTP), so generation runs in a thread and hands candidates to the RPC through a queue; a cancelled RPC
stops the thread after the batch in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from archloop import prompts
from archloop.errors import FailedPrecondition, InvalidArgument
from archloop.factors import FactorFileError, load_factors
from archloop.server import ServicerBase
from archloop.settings import SettingsError
from archloop.v1 import generator_pb2, generator_pb2_grpc
from services.generator.backend import AdapterInfo, Backend
from services.generator.engine import CandidateMaker
from services.generator.factory import make_backend
from services.generator.plan import MODES, plan_from_request, task_from_spec
from services.generator.settings import GeneratorSettings

log = structlog.get_logger("archloop.generator")
_DONE = object()


def _adapter_pb(info: AdapterInfo) -> generator_pb2.LoadedAdapter:
    return generator_pb2.LoadedAdapter(name=info.name, path=info.path, weights_sha256=info.weights_sha256)


class GeneratorServicer(ServicerBase, generator_pb2_grpc.GeneratorServiceServicer):
    service_name = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
    add_to_server = staticmethod(generator_pb2_grpc.add_GeneratorServiceServicer_to_server)

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
        self.factors: dict = {}
        self.backend: Backend | None = None

    async def start(self) -> None:
        try:
            self.factors = load_factors(self.settings.factors_file)
        except FactorFileError as exc:
            raise SettingsError(f"--factors-file/ARCHLOOP_FACTORS_FILE: {exc}") from None
        self.backend = await asyncio.to_thread(make_backend, self.settings)
        await asyncio.to_thread(self.backend.start)
        log.info(
            "backend_ready", backend=self.backend.name, **await asyncio.to_thread(self._describe_quietly)
        )

    def _describe_quietly(self) -> dict:
        assert self.backend is not None
        try:
            return self.backend.describe()
        except Exception as exc:
            return {"describe_error": str(exc)}

    async def stop(self) -> None:
        if self.backend is not None:
            await asyncio.to_thread(self.backend.close)

    def _maker(self) -> CandidateMaker:
        assert self.backend is not None
        b = self.backend
        fim = all(b.count_tokens(token) == 1 for token in prompts.FIM_TOKENS)  # one id each: trained for FIM
        return CandidateMaker(
            b.generate, b.name, b.model_id, b.batch_size, self.factors,
            b.context_tokens, b.count_tokens, b.render, fim,
        )  # fmt: skip

    def _adapter(self, name: str, path: str, sha: str) -> AdapterInfo | None:
        """The request's adapter, loaded (local, with a path) and proven present."""
        assert self.backend is not None
        if not name:
            if path:
                raise InvalidArgument("adapter.name", "is empty but adapter.path is set")
            return None
        if name in self.backend.adapters and not path:
            return self.backend.ensure_adapter(name)
        if not path and self.settings.adapters_dir and (Path(self.settings.adapters_dir) / name).is_dir():
            path = str(Path(self.settings.adapters_dir) / name)
        if path and self.backend.loads_adapters_from_path:
            return self.backend.load_adapter(name, path, sha)[0]
        info = self.backend.ensure_adapter(name)
        if info is not None and sha and info.weights_sha256 and info.weights_sha256 != sha:
            raise FailedPrecondition(f"adapter.weights_sha256: {name!r} is loaded with other weights")
        return info

    async def GenerateCandidates(
        self, request: generator_pb2.GenerateCandidatesRequest, context
    ) -> AsyncIterator[generator_pb2.GenerateCandidatesResponse]:
        plan = plan_from_request(request, self.settings.max_candidates, self.factors)
        adapter = request.adapter
        info = await asyncio.to_thread(self._adapter, adapter.name, adapter.path, adapter.weights_sha256)
        plan.adapter_sha256 = info.weights_sha256 if info else ""
        maker = self._maker()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stopped = threading.Event()

        def produce() -> None:
            try:
                for candidate in maker.run(plan, stopped.is_set):
                    loop.call_soon_threadsafe(queue.put_nowait, candidate)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        worker = threading.Thread(target=produce, name="generate", daemon=True)
        worker.start()
        count = 0
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                count += 1
                yield generator_pb2.GenerateCandidatesResponse(candidate=item)
        finally:
            stopped.set()
            log.info(
                "generated", experiment=plan.experiment_id, cycle=plan.cycle, mode=plan.mode, candidates=count
            )

    async def DescribeBackend(self, request, context) -> generator_pb2.DescribeBackendResponse:
        assert self.backend is not None
        described = await asyncio.to_thread(self.backend.describe)
        return generator_pb2.DescribeBackendResponse(
            backend=self.backend.name,
            model_id=described["model_id"],
            model_sha256=described["model_sha256"],
            adapters=[_adapter_pb(info) for info in self.backend.adapters.values()],
            max_candidates_per_request=self.settings.max_candidates,
            device=described["device"],
            factors=list(self.factors),
            context_tokens=min(self.backend.context_tokens, 2**31 - 1),
        )

    async def CheckPromptFit(self, request, context) -> generator_pb2.CheckPromptFitResponse:
        mode = MODES.get(request.mode)
        if mode not in ("delta", "factor", "region"):
            raise InvalidArgument(
                "mode", f"{request.mode} is not delta, factor or region (only edits have a parent)"
            )
        task = task_from_spec(request.task)
        maker = self._maker()

        def measure() -> list[generator_pb2.PromptFit]:
            fits = []
            for code in request.codes:
                ok, prompt, answer = maker.parent_fits(task, mode, code)
                fits.append(generator_pb2.PromptFit(prompt_tokens=prompt, answer_tokens=answer, fits=ok))
            return fits

        fits = await asyncio.to_thread(measure)
        context_tokens = min(maker.context_tokens, 2**31 - 1)
        return generator_pb2.CheckPromptFitResponse(context_tokens=context_tokens, fits=fits)

    async def LoadAdapter(self, request, context) -> generator_pb2.LoadAdapterResponse:
        assert self.backend is not None
        adapter = request.adapter
        if not adapter.name:
            raise InvalidArgument("adapter.name", "is empty")
        path = adapter.path
        if (
            not path
            and self.settings.adapters_dir
            and (Path(self.settings.adapters_dir) / adapter.name).is_dir()
        ):
            path = str(Path(self.settings.adapters_dir) / adapter.name)
        if not path and self.backend.name == "local":
            raise InvalidArgument("adapter.path", "is empty (the local backend loads adapters from folders)")
        info, now = await asyncio.to_thread(
            self.backend.load_adapter, adapter.name, path, adapter.weights_sha256
        )
        return generator_pb2.LoadAdapterResponse(adapter=_adapter_pb(info), loaded_now=now)
