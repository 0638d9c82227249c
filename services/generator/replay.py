"""The replay backend: programs from a folder instead of a language model."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from archloop.errors import FailedPrecondition
from archloop.settings import SettingsError
from services.generator.backend import AdapterInfo, Completion, Decoding, adapter_weights


class ReplayBackend:
    """Programs from a folder instead of a language model (`--backend replay --replay-dir DIR`).

    The candidate with seed s gets program s mod n of the folder's `*.py` files in name order; seeds
    of one request are consecutive (engine.candidate_seed), so a cycle of n candidates replays each
    program exactly once. What for: re-evaluating a saved population under another protocol, sending
    chosen programs (known-good, hostile) through the whole loop, and tests that need the loop to
    admit candidates without a GPU-sized model. Adapters are checked and recorded as the local
    backend does (a missing or broken one is FAILED_PRECONDITION), but do not change the output."""

    name = "replay"
    loads_adapters_from_path = True

    def __init__(self, folder: str, seconds_per_candidate: float = 0.0, batch_size: int = 8) -> None:
        self.folder = Path(folder)
        self.batch_size = batch_size
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

    def start(self) -> None:
        pass

    def render(self, messages: list[dict[str, str]]) -> str:
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    context_tokens = 1 << 30  # replayed answers are not sampled: any prompt fits

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
