"""Where the tokens come from: the `Backend` protocol every backend meets, and what they share.

One module each: services.generator.local (transformers + peft in this process), services.generator.tgi
(a TGI server, optionally launched and restarted by the generator), services.generator.replay (a folder
of programs); services.generator.factory picks one from the settings.

Both take chat prompts (lists of messages, rendered with the base model's chat template) and return one
Completion per prompt. Both refuse, with FAILED_PRECONDITION, to generate with an adapter they do not
have: the local backend loads adapters with peft and knows; TGI silently answers with the base model for
an adapter it did not load at start, so the tgi backend *proves* an adapter is live by comparing the
prompt log-probabilities TGI reports for a probe with and without it (`decoder_input_details`). In
managed mode the generator runs `text-generation-launcher` itself and restarts it with the new adapter
list (TGI loads LoRA adapters only at start).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from archloop import basemodel
from archloop.errors import FailedPrecondition


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


class Backend(Protocol):
    """What the servicer and the candidate engine use of a backend; all methods block (the servicer
    calls them in a thread)."""

    name: str  # "local" | "tgi" | "replay": reported by DescribeBackend and recorded on candidates
    model_id: str
    adapters: dict[str, AdapterInfo]  # loaded (tgi: proven live), by name
    batch_size: int  # prompts per generate() call

    @property
    def context_tokens(self) -> int:
        """The model's context, prompt and answer together."""
        ...

    loads_adapters_from_path: bool  # False: adapters must be loaded by whoever started the server

    def start(self) -> None:
        """Whatever must run before the first request (tgi managed mode: the launcher)."""

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def describe(self) -> dict: ...

    def load_adapter(self, name: str, path: str, weights_sha256: str = "") -> tuple[AdapterInfo, bool]:
        """(the adapter, whether it was new or changed); FailedPrecondition for a broken folder."""
        ...

    def ensure_adapter(self, name: str) -> AdapterInfo | None:
        """The loaded adapter of that name ('' → None); FailedPrecondition when it is not loaded."""
        ...

    def generate(
        self, chats: list[list[dict[str, str]]], decoding: Decoding, seeds: list[int], adapter: str = ""
    ) -> list[Completion]: ...

    def close(self) -> None: ...
