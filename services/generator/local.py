"""The local backend: the base model in this process (transformers), adapters with peft.

It samples with a KV cache that grows in place (services.generator.kvcache): transformers' own copies
the whole cache every token, 70 % of a step for the tiny model's batch of 24 on a CPU.

A small model samples with each adapter merged into a copy of its weights (peft's merge_and_unload): a
plain transformers model again, without peft's wrapper around every projection, which cost the tiny
model about a tenth of its sampling speed (docs/benchmarks.md#fine-tune-speed-and-the-loops-wall-clock). The
copy costs one model's memory per loaded adapter, so a model of MERGE_BELOW_PARAMETERS or more keeps one
set of weights and lets peft switch adapters.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from typing import Any

import structlog

from archloop import basemodel
from archloop.errors import FailedPrecondition
from services.generator.backend import AdapterInfo, Completion, Decoding, adapter_weights
from services.generator.kvcache import growing_cache

log = structlog.get_logger("archloop.generator")
MERGE_BELOW_PARAMETERS = 2_000_000_000


class LocalBackend:
    """transformers in-process: batched sampling with a KV cache, peft adapters by name."""

    name = "local"
    loads_adapters_from_path = True

    def __init__(
        self, model_ref: str = "", device: str = "auto", threads: int = 0, batch_size: int = 8
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.batch_size = batch_size
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
        self.merges_adapters = self.model.num_parameters() < MERGE_BELOW_PARAMETERS
        self._merged: dict[str, Any] = {}  # peft adapter key → a copy of the model with it merged in
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

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
                if self.merges_adapters:
                    wrapped = PeftModel.from_pretrained(copy.deepcopy(self.model), str(folder))
                    self._merged[key] = wrapped.merge_and_unload().eval()
                elif self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=key)
                else:
                    self._peft.load_adapter(str(folder), adapter_name=key)
            except (ValueError, RuntimeError, KeyError, OSError) as exc:
                raise FailedPrecondition(f"adapter.path: {path} does not fit the base model: {exc}") from None
            if self._peft is not None:
                self._peft.eval()
            old = self._keys.get(name)
            if old and old != key:
                if self.merges_adapters:
                    del self._merged[old]
                else:
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
        if adapter and self.merges_adapters:
            return self._merged[self._keys[adapter]], contextlib.nullcontext()
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
            cache = growing_cache(model)
            if cache is not None:
                options["past_key_values"] = cache
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
