"""The TGI backend: a Hugging Face text-generation-inference server through its HTTP API.

TGI silently answers with the base model for an adapter it did not load at start, so this backend
*proves* an adapter is live by comparing the prompt log-probabilities TGI reports for a probe with and
without it (`decoder_input_details`). In managed mode the generator runs `text-generation-launcher`
itself (TGILauncher) and restarts it with the new adapter list (TGI loads LoRA adapters only at start).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from archloop import basemodel
from archloop.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.generator.backend import AdapterInfo, Completion, Decoding, adapter_weights

log = structlog.get_logger("archloop.generator")


class TGILauncher:
    """Managed mode: runs `<launcher> --model-id M --port P --lora-adapters a=path,...` and restarts it."""

    def __init__(self, command: str, model_id: str, url: str, startup_seconds: float) -> None:
        self.command = shlex.split(command)
        self.model_id = model_id
        self.port = urllib.parse.urlsplit(url).port or 80
        self.url = url.rstrip("/")
        self.startup_seconds = startup_seconds
        self.adapters: dict[str, str] = {}
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="archloop-tgi-")) / "launcher.log"

    def start(self, adapters: dict[str, str]) -> None:
        self.stop()
        args = [*self.command, "--model-id", self.model_id, "--port", str(self.port)]
        listed = ",".join(f"{name}={path}" for name, path in adapters.items())
        if listed:
            args += ["--lora-adapters", listed]
        env = {**os.environ, "LORA_ADAPTERS": listed} if listed else dict(os.environ)
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                args, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.adapters = dict(adapters)
        log.info("tgi_launched", pid=self.process.pid, adapters=sorted(adapters), log=str(self.log_path))
        deadline = time.monotonic() + self.startup_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-600:]
                raise Unavailable(f"the TGI launcher exited with {self.process.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise Unavailable(
            f"TGI did not become healthy within {self.startup_seconds:g} s (log {self.log_path})"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class TGIBackend:
    """A Hugging Face TGI server through its HTTP API (/generate with adapter_id, /info, /health).

    Why plain HTTP (the standard library's urllib) and not a client library, measured with the pinned
    versions (test_the_tgi_client_libraries_fail_where_this_backend_works in
    services/generator/tests/test_service.py pins each reason: an upgrade that removes one fails it):
    - `huggingface_hub` 2.4.0's InferenceClient, the maintained TGI client, carries `adapter_id`,
      `decoder_input_details` and `details`, but (1) under HF_HUB_OFFLINE=1, the usual setting on an
      air-gapped cluster and on this project's laptops, it refuses every request, to a TGI on loopback
      too (`OfflineModeIsEnabled: Cannot reach http://127.0.0.1:…/`); (2) `get_endpoint_info()` on a
      server given by URL raises ValueError ("not supported on 'None'"), so /info (max_total_tokens,
      model_sha) would still be hand-written, and its info/health calls run with no timeout at all (the
      shared session's `Timeout(timeout=None)`); (3) its timeout is one per client, not per call; (4) when
      a server answers "model_kwargs are not used" it drops those parameters (adapter_id among them) with a
      warning and remembers that per URL for the process's life: a generation without its adapter, which
      this backend exists to prevent.
    - The `text-generation` client (0.7.0) has no adapter_id and a 10 s default timeout.
    Prompts are rendered with the base model's chat template here, so every decoding setting (top-k
    included) goes to /generate; `settings.model` names the tokenizer ('' = the tiny model's).
    """

    name = "tgi"
    PROBE = "import torch\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n    def forward(self, x):\n"

    def __init__(
        self,
        url: str,
        tokenizer_ref: str = "",
        timeout_seconds: float = 600.0,
        concurrency: int = 8,
        launcher: TGILauncher | None = None,
        model_id: str = "",
    ) -> None:
        from transformers import AutoTokenizer

        self.url = url.rstrip("/")
        self.timeout = timeout_seconds
        self.tokenizer = AutoTokenizer.from_pretrained(basemodel.resolve_base_model(tokenizer_ref))
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tgi")
        self.launcher = launcher
        self.model_id = model_id
        self.batch_size = concurrency  # every prompt is its own request; TGI batches them
        # an adapter can be loaded from a path only by restarting a launcher we run
        self.loads_adapters_from_path = launcher is not None
        self.adapters: dict[str, AdapterInfo] = {}  # proven live
        self._base_probe: list[float] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.launcher is not None:
            self.launcher.start({})

    # -- HTTP --------------------------------------------------------------------------------------
    def _call(self, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method="POST" if data else "GET",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            if exc.code in (400, 413, 422):
                raise InvalidArgument("prompt", f"TGI refused the request ({exc.code}): {detail}") from None
            if exc.code == 424 or exc.code >= 500:
                raise Unavailable(f"TGI at {self.url} failed ({exc.code}): {detail}") from None
            raise FailedPrecondition(f"TGI at {self.url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"TGI at {self.url} is unreachable: {reason}") from None

    def describe(self) -> dict:
        info = self._call("/info", timeout=10)
        return {
            "model_id": info.get("model_id", ""),
            "model_sha256": info.get("model_sha") or "",
            "device": info.get("model_device_type", ""),
        }

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    @functools.cached_property
    def context_tokens(self) -> int:
        """The server's max_total_tokens (prompt and answer), asked once; the tokenizer's limit when
        /info does not say."""
        limit = self._call("/info", timeout=10).get("max_total_tokens") or self.tokenizer.model_max_length
        return int(min(limit, 1 << 30))

    # -- adapters ----------------------------------------------------------------------------------
    def _prefill(self, adapter: str) -> list[float]:
        parameters: dict[str, Any] = {"max_new_tokens": 1, "decoder_input_details": True, "details": True}
        if adapter:
            parameters["adapter_id"] = adapter
        answer = self._call("/generate", {"inputs": self.PROBE, "parameters": parameters}, timeout=60)
        prefill = (answer.get("details") or {}).get("prefill") or []
        return [float(t["logprob"]) for t in prefill if t.get("logprob") is not None]

    def _live(self, name: str) -> bool:
        """Does TGI really apply `name`? Its prompt log-probabilities must differ from the base model's."""
        if self._base_probe is None:
            self._base_probe = self._prefill("")
        with_adapter = self._prefill(name)
        if not with_adapter or not self._base_probe:
            raise Unavailable(f"TGI at {self.url} returned no prefill details (decoder_input_details)")
        return any(abs(a - b) > 1e-4 for a, b in zip(with_adapter, self._base_probe, strict=False))

    def ensure_adapter(self, name: str) -> AdapterInfo | None:
        if not name:
            return None
        with self._lock:
            if name in self.adapters:
                return self.adapters[name]
            if self.launcher is not None and name not in self.launcher.adapters:
                raise FailedPrecondition(
                    f"adapter.name: {name!r} is not in the managed TGI's adapter list (LoadAdapter it first)"
                )
            if not self._live(name):
                raise FailedPrecondition(
                    f"adapter.name: TGI at {self.url} does not have {name!r} loaded: it answers with the "
                    "base model (start it with LORA_ADAPTERS, or run the generator in managed mode)"
                )
            path = self.launcher.adapters.get(name, "") if self.launcher else ""
            info = AdapterInfo(name, path, adapter_weights(path)[1] if path else "")
            self.adapters[name] = info
            return info

    def load_adapter(self, name: str, path: str, weights_sha256: str = "") -> tuple[AdapterInfo, bool]:
        if self.launcher is None:
            info = self.ensure_adapter(name)
            assert info is not None
            return info, False
        folder = adapter_weights(path, weights_sha256)[0] if path else Path()
        with self._lock:
            known = self.launcher.adapters.get(name)
            if known is not None and (not path or known == str(folder)) and name in self.adapters:
                return self.adapters[name], False
            if not path:
                raise FailedPrecondition(f"adapter.path: needed to add {name!r} to the managed TGI")
            self.launcher.start({**self.launcher.adapters, name: str(folder)})
            self.adapters.clear()
            self._base_probe = None
        info = self.ensure_adapter(name)
        assert info is not None
        return info, True

    # -- generation --------------------------------------------------------------------------------
    def _one(self, prompt: str, decoding: Decoding, seed: int, adapter: str) -> Completion:
        parameters: dict[str, Any] = {
            "max_new_tokens": decoding.max_new_tokens,
            "details": True,
            "seed": seed,
            "do_sample": decoding.temperature > 0,
        }
        if decoding.temperature > 0:
            parameters.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
        if decoding.repetition_penalty and decoding.repetition_penalty != 1.0:
            parameters["repetition_penalty"] = decoding.repetition_penalty
        if adapter:
            parameters["adapter_id"] = adapter
        started = time.perf_counter()
        answer = self._call("/generate", {"inputs": prompt, "parameters": parameters})
        details = answer.get("details") or {}
        return Completion(
            answer.get("generated_text", ""),
            self.count_tokens(prompt),
            int(details.get("generated_tokens", 0)),
            time.perf_counter() - started,
            details.get("finish_reason", "") != "length",
        )

    def generate(
        self, chats: list[list[dict[str, str]]], decoding: Decoding, seeds: list[int], adapter: str = ""
    ) -> list[Completion]:
        """Every prompt is its own request with its own seed; TGI batches them server-side."""
        prompts_ = [self.render(chat) for chat in chats]
        futures = [
            self.pool.submit(self._one, text, decoding, seed, adapter)
            for text, seed in zip(prompts_, seeds, strict=True)
        ]
        return [future.result() for future in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.launcher is not None:
            self.launcher.stop()
