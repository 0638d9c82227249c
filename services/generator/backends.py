"""Where the tokens come from: the local backend (transformers + peft in this process), a TGI server,
or (replay) a folder of programs.

Both take chat prompts (lists of messages, rendered with the base model's chat template) and return one
Completion per prompt. Both refuse, with FAILED_PRECONDITION, to generate with an adapter they do not
have: the local backend loads adapters with peft and knows; TGI silently answers with the base model for
an adapter it did not load at start, so the tgi backend *proves* an adapter is live by comparing the
prompt log-probabilities TGI reports for a probe with and without it (`decoder_input_details`). In
managed mode the generator runs `text-generation-launcher` itself and restarts it with the new adapter
list (TGI loads LoRA adapters only at start).
"""

from __future__ import annotations

import contextlib
import hashlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from archloop import basemodel
from archloop.errors import FailedPrecondition, InvalidArgument, Unavailable
from archloop.settings import SettingsError

log = structlog.get_logger("archloop.generator")


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.2
    top_k: int = 50
    top_p: float = 0.9
    max_new_tokens: int = 2048
    repetition_penalty: float = 1.0


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    finished: bool  # False: cut off by the token limit


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    weights_sha256: str


def adapter_weights(path: str, expected_sha256: str = "") -> tuple[Path, str]:
    """(folder, weights sha256) of a peft adapter folder; FailedPrecondition when it is not one, or
    when `expected_sha256` is given and the weights hash to something else."""
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise FailedPrecondition(f"adapter.path: {path} holds no adapter_config.json")
    if not any(folder.glob("*.safetensors")):
        raise FailedPrecondition(f"adapter.path: {path} holds no .safetensors weights")
    actual = basemodel.weights_sha256(folder)
    if expected_sha256 and expected_sha256 != actual:
        raise FailedPrecondition(
            f"adapter.weights_sha256: the weights in {path} hash to {actual[:12]}…,"
            f" not {expected_sha256[:12]}…"
        )
    return folder, actual


class LocalBackend:
    """transformers in-process: batched sampling with a KV cache, peft adapters by name."""

    name = "local"

    def __init__(self, model_ref: str = "", device: str = "auto", threads: int = 0) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.tokenizer, resolved = basemodel.load_base(model_ref, device)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        self.model_id = str(resolved)
        self.model_sha256 = basemodel.base_model_sha256(resolved)
        config = self.model.config
        self.context_tokens = int(
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0) or 1 << 30
        )
        self.adapters: dict[str, AdapterInfo] = {}
        self._keys: dict[str, str] = {}  # adapter name → peft adapter key (a new key per weights version)
        self._peft: Any = None
        self._lock = threading.Lock()

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def describe(self) -> dict:
        return {"model_id": self.model_id, "model_sha256": self.model_sha256, "device": self.device}

    def load_adapter(self, name: str, path: str, weights_sha256: str = "") -> tuple[AdapterInfo, bool]:
        folder, actual = adapter_weights(path, weights_sha256)
        with self._lock:
            have = self.adapters.get(name)
            if have and have.weights_sha256 == actual:
                return have, False
            from peft import PeftModel

            key = f"{name}@{actual[:12]}"
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=key)
                else:
                    self._peft.load_adapter(str(folder), adapter_name=key)
            except (ValueError, RuntimeError, KeyError, OSError) as exc:
                raise FailedPrecondition(f"adapter.path: {path} does not fit the base model: {exc}") from None
            self._peft.eval()
            old = self._keys.get(name)
            if old and old != key:
                self._peft.delete_adapter(old)
            self._keys[name] = key
            info = AdapterInfo(name, str(folder), actual)
            self.adapters[name] = info
            log.info("adapter_loaded", adapter=name, path=str(folder), weights_sha256=actual[:12])
            return info, True

    def ensure_adapter(self, name: str) -> AdapterInfo | None:
        if not name:
            return None
        info = self.adapters.get(name)
        if info is None:
            raise FailedPrecondition(
                f"adapter.name: {name!r} is not loaded (give adapter.path, or LoadAdapter first)"
            )
        return info

    def generate(
        self, chats: list[list[dict[str, str]]], decoding: Decoding, seeds: list[int], adapter: str = ""
    ) -> list[Completion]:
        """One batch: all prompts sampled together; the batch's randomness is seeded by seeds[0]."""
        return self.generate_texts([self.render(chat) for chat in chats], decoding, seeds[0], adapter)

    def _active(self, adapter: str) -> tuple[Any, Any]:
        """(model, context manager) that generate with `adapter` ('' = the base model); hold the lock."""
        if self._peft is None:
            return self.model, contextlib.nullcontext()
        if adapter:
            self._peft.set_adapter(self._keys[adapter])
            return self._peft, contextlib.nullcontext()
        return self._peft, self._peft.disable_adapter()

    def generate_texts(
        self, texts: list[str], decoding: Decoding, seed: int, adapter: str = ""
    ) -> list[Completion]:
        import torch

        with self._lock:
            started = time.perf_counter()
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                self.device
            )
            width = encoded.input_ids.shape[1]
            room = self.context_tokens - width
            if room <= 0:
                raise FailedPrecondition(
                    f"prompt: {width} tokens leave no room in the model's context of {self.context_tokens}"
                )
            model, scope = self._active(adapter)
            sampling = decoding.temperature > 0
            options: dict[str, Any] = {
                "do_sample": sampling,
                "max_new_tokens": min(decoding.max_new_tokens, room),
            }
            if sampling:
                options.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
            if decoding.repetition_penalty and decoding.repetition_penalty != 1.0:
                options["repetition_penalty"] = decoding.repetition_penalty
            torch.manual_seed(seed)
            with scope, torch.inference_mode():
                output = model.generate(
                    **encoded,
                    **options,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            latency = time.perf_counter() - started
        eos = self.tokenizer.eos_token_id
        results = []
        for row, mask in zip(output, encoded.attention_mask, strict=True):
            new = row[width:].tolist()
            finished = eos in new
            if finished:
                new = new[: new.index(eos) + 1]
            else:
                while new and new[-1] == self.tokenizer.pad_token_id:
                    new.pop()
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            results.append(Completion(text, int(mask.sum()), len(new), latency, finished))
        return results

    def prompt_logprobs(self, text: str, adapter: str = "") -> list[tuple[int, str, float | None]]:
        """(token id, text, log-probability given the tokens before it) of each prompt token; None first."""
        import torch

        with self._lock:
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(
                self.device
            )
            ids = ids[:, : self.context_tokens]
            model, scope = self._active(adapter)
            with scope, torch.inference_mode():
                logits = model(input_ids=ids).logits.float()
            logprobs = torch.log_softmax(logits[0, :-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0].tolist()
        tokens = ids[0].tolist()
        return [(t, self.tokenizer.decode([t]), lp) for t, lp in zip(tokens, [None, *logprobs], strict=True)]

    def close(self) -> None:
        pass


class ReplayBackend:
    """Programs from a folder instead of a language model (`--backend replay --replay-dir DIR`).

    The candidate with seed s gets program s mod n of the folder's `*.py` files in name order; seeds
    of one request are consecutive (engine.candidate_seed), so a cycle of n candidates replays each
    program exactly once. What for: re-evaluating a saved population under another protocol, sending
    chosen programs (known-good, hostile) through the whole loop, and tests that need the loop to
    admit candidates without a GPU-sized model. Adapters are checked and recorded as the local
    backend does (a missing or broken one is FAILED_PRECONDITION), but do not change the output."""

    name = "replay"

    def __init__(self, folder: str, seconds_per_candidate: float = 0.0) -> None:
        self.folder = Path(folder)
        self.seconds_per_candidate = seconds_per_candidate
        files = sorted(self.folder.glob("*.py")) if folder else []
        if not files:
            where = folder or "(empty)"
            raise SettingsError(f"--replay-dir/ARCHLOOP_REPLAY_DIR: {where} holds no .py programs")
        # the bytes as they are (read_text would translate \r\n), invalid UTF-8 replaced
        self.programs = [f.read_bytes().decode("utf-8", errors="replace") for f in files]
        digest = hashlib.sha256()
        for f, text in zip(files, self.programs, strict=True):
            digest.update(f.name.encode() + b"\0" + text.encode() + b"\0")
        self.model_id = f"replay:{self.folder}"
        self.model_sha256 = digest.hexdigest()
        self.adapters: dict[str, AdapterInfo] = {}

    def render(self, messages: list[dict[str, str]]) -> str:
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def describe(self) -> dict:
        return {"model_id": self.model_id, "model_sha256": self.model_sha256, "device": "cpu"}

    def load_adapter(self, name: str, path: str, weights_sha256: str = "") -> tuple[AdapterInfo, bool]:
        folder, actual = adapter_weights(path, weights_sha256)
        fresh = self.adapters.get(name) != AdapterInfo(name, str(folder), actual)
        self.adapters[name] = AdapterInfo(name, str(folder), actual)
        return self.adapters[name], fresh

    def ensure_adapter(self, name: str) -> AdapterInfo | None:
        if not name:
            return None
        if name not in self.adapters:
            raise FailedPrecondition(f"adapter.name: {name!r} is not loaded (give adapter.path)")
        return self.adapters[name]

    def generate(
        self, chats: list[list[dict[str, str]]], decoding: Decoding, seeds: list[int], adapter: str = ""
    ) -> list[Completion]:
        self.ensure_adapter(adapter)
        out = []
        for chat, seed in zip(chats, seeds, strict=True):
            time.sleep(self.seconds_per_candidate)
            code = self.programs[seed % len(self.programs)]
            text = f"```python\n{code.rstrip()}\n```"
            prompt_tokens = self.count_tokens(self.render(chat))
            out.append(Completion(text, prompt_tokens, self.count_tokens(text), 0.0, True))
        return out

    def close(self) -> None:
        pass


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

    The `text-generation` client is not used: its 0.7.0 release has no adapter_id and a 10 s default
    timeout. Prompts are rendered with the base model's chat template here, so every decoding setting
    (top-k included) goes to /generate; `settings.model` names the tokenizer ('' = the tiny model's).
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
    ) -> None:
        from transformers import AutoTokenizer

        self.url = url.rstrip("/")
        self.timeout = timeout_seconds
        self.tokenizer = AutoTokenizer.from_pretrained(basemodel.resolve_base_model(tokenizer_ref))
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tgi")
        self.launcher = launcher
        self.adapters: dict[str, AdapterInfo] = {}  # proven live
        self._base_probe: list[float] | None = None
        self._lock = threading.Lock()

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
