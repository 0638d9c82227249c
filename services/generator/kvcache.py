"""A KV cache that grows in place: transformers' DynamicCache with each layer's keys and values in a
buffer that doubles when full, instead of a new tensor per generated token.

transformers' DynamicLayer appends a step's keys and values with `torch.cat`, which copies the whole
cache every token: O(T²) bytes over a completion. For the tiny model sampling a batch of 24 on a CPU
that copy was 70 % of a step (bench/speed_variants.py, docs/benchmarks.md). Here a step writes its
keys and values into the free end of the buffer and the attention reads a view of the filled part, so
a completion copies O(T) bytes. The values the model sees are the same tensors (same shapes, same
numbers), so a seed samples the same tokens (services/generator/tests/test_kvcache.py).

`growing_cache(model)` gives one for a model whose every layer is a plain full-attention layer (GPT-2,
Llama); None for anything else (sliding windows, linear attention: generate() then builds its own).
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer

FIRST_ROOM = 256  # tokens of room after the prompt before the first doubling


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose `keys`/`values` are views of the filled part of a larger buffer."""

    def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: Any = None
        self._value_buffer: Any = None
        self._filled = 0

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._filled + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._grow(key_states, value_states, end)
        self._key_buffer[..., self._filled : end, :] = key_states
        self._value_buffer[..., self._filled : end, :] = value_states
        self._set_filled(end)
        return self.keys, self.values

    def _grow(self, key_states: Any, value_states: Any, end: int) -> None:
        room = end + FIRST_ROOM if self._key_buffer is None else max(end, 2 * self._key_buffer.shape[-2])
        keys = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
        if self._filled:
            keys[..., : self._filled, :] = self.keys
            values[..., : self._filled, :] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def _set_filled(self, filled: int) -> None:
        self._filled = filled
        self.keys = self._key_buffer[..., :filled, :]
        self.values = self._value_buffer[..., :filled, :]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # checks the argument, shortens the views
        if self.is_initialized and self._key_buffer is not None:
            self._set_filled(self.keys.shape[-2])

    def batch_select_indices(self, indices: Any) -> None:
        if self.get_seq_length() > 0:
            self._key_buffer = self._key_buffer[indices, ...]
            self._value_buffer = self._value_buffer[indices, ...]
            self._set_filled(self._filled)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
            self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
            self._set_filled(self._filled)

    def reorder_cache(self, beam_idx: Any) -> None:
        self.batch_select_indices(beam_idx.to(self._key_buffer.device))

    def reset(self) -> None:
        super().reset()
        self._key_buffer = self._value_buffer = None
        self._filled = 0


def growing_cache(model: Any) -> DynamicCache | None:
    """A fresh DynamicCache of GrowingLayers for `model` (one per generate() call), or None when the
    model's cache is not all plain full-attention layers."""
    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache
