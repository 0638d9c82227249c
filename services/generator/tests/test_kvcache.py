"""The growing KV cache: generate() samples the same tokens with it as with transformers' own cache (the
same seed, left-padded prompts of different lengths, past two doublings of the buffer), and its views
stay right when a cache is cropped or narrowed to some rows."""

from __future__ import annotations

import pytest
import torch

from archloop import basemodel
from services.generator import kvcache
from services.generator.kvcache import GrowingLayer, growing_cache


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, _ = basemodel.load_base("", "cpu")
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


def _generate(model, tokenizer, cache) -> list[list[int]]:
    encoded = tokenizer(["import torch", "class Net(nn.Module):\n    def __init__(self"], return_tensors="pt",
                        padding=True, add_special_tokens=False)  # fmt: skip
    options = {"past_key_values": cache} if cache is not None else {}
    torch.manual_seed(7)
    with torch.inference_mode():
        out = model.generate(**encoded, do_sample=True, temperature=0.8, top_k=50, top_p=0.95,
                             max_new_tokens=60, min_new_tokens=60, pad_token_id=tokenizer.pad_token_id,
                             **options)  # fmt: skip
    return out.tolist()


def test_sampling_with_the_growing_cache_draws_the_same_tokens(tiny, monkeypatch) -> None:
    model, tokenizer = tiny
    monkeypatch.setattr(kvcache, "FIRST_ROOM", 8)  # 60 new tokens: the buffer doubles several times
    cache = growing_cache(model)
    assert cache is not None and all(type(layer) is GrowingLayer for layer in cache.layers)
    grown = _generate(model, tokenizer, cache)
    assert grown == _generate(model, tokenizer, None)
    layer = cache.layers[0]
    assert layer._key_buffer.shape[-2] > layer.get_seq_length() >= 60  # it grew, and holds what it was fed


def test_crop_and_row_selection_keep_the_views_on_the_buffer() -> None:
    layer = GrowingLayer()
    keys = torch.arange(3 * 2 * 5 * 4, dtype=torch.float32).reshape(3, 2, 5, 4)
    layer.update(keys, -keys)
    step = torch.full((3, 2, 1, 4), 100.0)
    k, v = layer.update(step, -step)
    assert torch.equal(k, torch.cat([keys, step], dim=-2)) and torch.equal(v, -k)
    layer.crop(-2)
    assert torch.equal(layer.keys, keys[..., :4, :]) and layer.get_seq_length() == 4
    layer.batch_select_indices(torch.tensor([2, 0]))
    k, _ = layer.update(step[:2], -step[:2])
    assert torch.equal(k, torch.cat([keys[[2, 0], :, :4], step[:2]], dim=-2))
    with pytest.raises(ValueError):
        layer.crop(3)  # transformers' own check still applies
