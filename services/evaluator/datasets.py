"""Evaluation data held as tensors: a fixed train/validation split, per-dataset normalisation, and
augmentation applied to whole training batches (never to validation data).

Offline and in tests the dataset is scikit-learn's bundled `digits` (1,797 8×8 images, 10 classes),
upsampled to 3×32×32 so CIFAR-shaped models run unchanged. CIFAR-10/100, SVHN, MNIST and
Fashion-MNIST come through torchvision from a data directory; when the files are missing and
downloading is not allowed, the error names the directory and the files expected.

Batches are slices of tensors already in memory (on the GPU when there is one): no per-sample
Python transforms on the hot path. The reference harness flipped test images too and had no
validation split; here augmentation touches training batches only and validation is fixed by seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from archloop.datasets import CATALOGUE


class DatasetUnavailable(RuntimeError):
    """The dataset's files are not in the data directory and downloading is not allowed."""


@dataclass
class EvaluationData:
    name: str
    train_images: torch.Tensor  # (N, C, H, W) float32, normalised
    train_labels: torch.Tensor  # (N,) int64
    validation_images: torch.Tensor
    validation_labels: torch.Tensor
    num_classes: int
    random_crop: bool
    horizontal_flip: bool

    @property
    def in_shape(self) -> tuple[int, int, int, int]:
        """Shape of one input batch of size 1, as the model contract passes it."""
        _, channels, height, width = self.train_images.shape
        return (1, channels, height, width)

    def on(self, device: torch.device) -> EvaluationData:
        """The same data on `device` (a new object; the template's copy stays where it is)."""
        if self.train_images.device == device:
            return self
        return EvaluationData(self.name, self.train_images.to(device), self.train_labels.to(device),
                              self.validation_images.to(device), self.validation_labels.to(device),
                              self.num_classes, self.random_crop, self.horizontal_flip)  # fmt: skip


def _split(images: torch.Tensor, labels: torch.Tensor, validation_fraction: float, seed: int):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = len(labels) - max(1, round(len(labels) * validation_fraction))
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


def _normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel mean/std of the training split, applied to every split."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def load_digits(validation_fraction: float = 0.2, seed: int = 0, max_train_images: int = 0) -> EvaluationData:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_x, train_y, val_x, val_y = _split(images.contiguous(), labels, validation_fraction, seed)
    if max_train_images:
        train_x, train_y = train_x[:max_train_images], train_y[:max_train_images]
    train_x, val_x = _normalise(train_x, val_x)
    return EvaluationData("digits", train_x, train_y, val_x, val_y, 10, True, False)


def load_torchvision(
    name: str, data_dir: Path, allow_download: bool, validation_fraction: float = 0.1, seed: int = 0,
    max_train_images: int = 0,
) -> EvaluationData:  # fmt: skip
    """Training split of a torchvision dataset, split into train/validation, as tensors."""
    import numpy as np
    import torchvision.datasets as tvd

    entry = CATALOGUE[name]
    cls = getattr(tvd, entry.torchvision_class)
    try:
        dataset = (
            cls(str(data_dir), split="train", download=allow_download)
            if name == "svhn"
            else cls(str(data_dir), train=True, download=allow_download)
        )
    except RuntimeError as exc:
        raise DatasetUnavailable(
            f"dataset {name} is not in {data_dir} (expected {entry.expected_files}); "
            f"place the files there or allow downloads ({exc})"
        ) from None
    data = dataset.data
    images = torch.as_tensor(np.asarray(data))
    if images.ndim == 3:  # MNIST-like: (N, H, W)
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3):  # CIFAR: (N, H, W, C)
        images = images.permute(0, 3, 1, 2)
    images = images.float() / 255.0
    labels = torch.as_tensor(
        np.asarray(getattr(dataset, "targets", None) or dataset.labels), dtype=torch.int64
    )
    train_x, train_y, val_x, val_y = _split(images.contiguous(), labels, validation_fraction, seed)
    if max_train_images:
        train_x, train_y = train_x[:max_train_images], train_y[:max_train_images]
    train_x, val_x = _normalise(train_x, val_x)
    return EvaluationData(
        name, train_x, train_y, val_x, val_y, int(labels.max()) + 1, entry.random_crop, entry.horizontal_flip
    )


def augment(images: torch.Tensor, generator: torch.Generator, random_crop: bool, flip: bool) -> torch.Tensor:
    """Random crop (pad 4, reflect) and horizontal flip for a whole batch at once."""
    if random_crop:
        batch, _, height, width = images.shape
        padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
        dy = torch.randint(0, 9, (batch,), generator=generator)
        dx = torch.randint(0, 9, (batch,), generator=generator)
        rows = (dy.view(-1, 1) + torch.arange(height)).to(images.device)  # (B, H)
        cols = (dx.view(-1, 1) + torch.arange(width)).to(images.device)  # (B, W)
        index = torch.arange(batch, device=images.device).view(-1, 1, 1)
        images = padded.permute(0, 2, 3, 1)[index, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    return images.contiguous()


def training_batches(
    data: EvaluationData, batch_size: int, epoch: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented (inputs, labels) batches; the same for the same seed and epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(data.train_labels), generator=generator).to(data.train_images.device)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        inputs = augment(data.train_images[index], generator, data.random_crop, data.horizontal_flip)
        yield inputs, data.train_labels[index]


def validation_batches(data: EvaluationData, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data.validation_labels), batch_size):
        yield (
            data.validation_images[start : start + batch_size],
            data.validation_labels[start : start + batch_size],
        )
