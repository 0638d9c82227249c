"""A fine-tune's data: every chat example of the corpus JSONL as token ids with the prompt masked out of
the labels (-100), batches in a seeded order per epoch, and padded tensors of a batch."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from archloop import corpus
from archloop.basemodel import encode_example
from archloop.errors import FailedPrecondition, InvalidArgument


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken


def encode_examples(path: Path, tokenizer, max_len: int) -> tuple[list[Example], int]:
    """Chat examples → token ids with prompt-masked labels; also how many were too long."""
    examples, too_long = [], 0
    for row in corpus.read_jsonl(path):
        messages = row.get("messages")
        if not messages or messages[-1].get("role") != "assistant":
            raise InvalidArgument(
                "corpus.path", f"example {row.get('id', '?')} does not end with an assistant message"
            )
        try:
            ids, mask = encode_example(tokenizer, messages)  # the base model's own encoding
        except ValueError:
            raise FailedPrecondition(
                "the tokenizer's chat template renders the prompt differently inside the chat"
            ) from None
        if len(ids) > max_len:
            too_long += 1
            continue
        examples.append(Example(ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]))
    return examples, too_long


def batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[Example]]:
    """The epoch's batches, in an order seeded by (seed, epoch): a resumed job sees the same ones."""
    order = list(range(len(examples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [[examples[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]


def collate(batch: list[Example], pad_id: int, device: str):
    """(input ids, labels, attention mask) of a batch, right-padded to its longest example."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return ids.to(device), labels.to(device), mask.to(device)
