"""Evaluation data: digits as CIFAR-shaped tensors, a fixed split, batch augmentation, clear errors."""

from __future__ import annotations

import pytest
import torch

from services.evaluator.datasets import (
    DatasetUnavailable,
    augment,
    load_digits,
    load_torchvision,
    training_batches,
    validation_batches,
)


def test_digits_are_cifar_shaped_normalised_and_split_by_seed() -> None:
    data = load_digits(validation_fraction=0.2, seed=3)
    assert data.in_shape == (1, 3, 32, 32) and data.num_classes == 10
    assert len(data.train_labels) + len(data.validation_labels) == 1797
    assert len(data.validation_labels) == 359
    assert abs(float(data.train_images.mean())) < 1e-4
    assert abs(float(data.train_images.std()) - 1) < 0.05
    again = load_digits(validation_fraction=0.2, seed=3)
    assert torch.equal(again.validation_labels, data.validation_labels)
    other = load_digits(validation_fraction=0.2, seed=4)
    assert not torch.equal(other.validation_labels, data.validation_labels)


def test_training_batches_are_deterministic_and_cover_the_split() -> None:
    data = load_digits(seed=0, max_train_images=300)
    first = list(training_batches(data, 64, epoch=1, seed=7))
    second = list(training_batches(data, 64, epoch=1, seed=7))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True)
    )
    assert sum(len(labels) for _, labels in first) == 300
    assert sorted(torch.cat([labels for _, labels in first]).tolist()) == sorted(data.train_labels.tolist())
    next_epoch = list(training_batches(data, 64, epoch=2, seed=7))
    assert not torch.equal(first[0][1], next_epoch[0][1])


def test_validation_is_never_augmented() -> None:
    data = load_digits(seed=0)
    batches = list(validation_batches(data, 100))
    assert torch.equal(torch.cat([x for x, _ in batches]), data.validation_images)


def test_augment_crops_and_flips_whole_batches() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    out = augment(images, generator, random_crop=True, flip=True)
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    flipped_only = augment(images, torch.Generator().manual_seed(1), random_crop=False, flip=True)
    for original, result in zip(images, flipped_only, strict=True):
        assert torch.equal(result, original) or torch.equal(result, original.flip(2))


def test_missing_torchvision_dataset_names_directory_and_files(tmp_path) -> None:
    with pytest.raises(DatasetUnavailable) as info:
        load_torchvision("cifar10", tmp_path, allow_download=False)
    assert str(tmp_path) in str(info.value) and "cifar-10-batches-py" in str(info.value)


def test_the_catalogue_is_the_one_home_of_datasets_and_their_spellings() -> None:
    from archloop import datasets, prompts

    assert datasets.NAMES == ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")
    assert datasets.lookup("cifar-10") is datasets.CATALOGUE["cifar10"]  # LEMUR's spelling
    assert datasets.lookup("imagenet") is None
    assert datasets.TORCHVISION == ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")
    # the digits loader delivers the catalogue's shape and classes
    data = load_digits(max_train_images=10)
    entry = datasets.CATALOGUE["digits"]
    assert data.in_shape[1:] == entry.input_shape and data.num_classes == entry.num_classes
    # the prompt keeps the paper's text for the evaluator's name and for LEMUR's
    for name in ("cifar10", "cifar-10"):
        assert prompts.task_for(name, (1, 3, 32, 32), 10) == prompts.TASKS["cifar-10"]
    svhn = prompts.task_for("svhn", (1, 3, 32, 32), 10)
    assert svhn.description == datasets.CATALOGUE["svhn"].description


def test_an_experiment_naming_a_dataset_outside_the_catalogue_is_refused() -> None:
    from archloop.errors import InvalidArgument
    from services.controller import config

    experiment = config.embedded()
    experiment.datasets[:] = ["cifar-10"]  # an alias is not an experiment's name for it
    with pytest.raises(InvalidArgument, match=r"datasets: 'cifar-10' is not one of \['digits', 'cifar10'"):
        config.validate(experiment)
