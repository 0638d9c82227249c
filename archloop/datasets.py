"""The dataset catalogue: the one place that says which datasets an experiment can name, their shapes,
classes, the words the prompt uses for them, and where torchvision finds their files.

Names are the evaluator's (`cifar10`, `fashion_mnist`, …); LEMUR and the paper's prompts spell two of
them differently (`cifar-10`, `mnist`), and `lookup` accepts those aliases. The evaluator loads the
data (services/evaluator/datasets.py), the controller checks an experiment's names and sizes its
prompt, the generator describes the task in its prompt, all from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one image, as the evaluator feeds it
    num_classes: int
    description: str  # what the prompt calls it
    aliases: tuple[str, ...] = ()
    torchvision_class: str = ""  # empty: not loaded through torchvision (digits ships with scikit-learn)
    expected_files: str = ""  # under the data directory, for the error that names what is missing
    random_crop: bool = False  # training-batch augmentation
    horizontal_flip: bool = False


CATALOGUE: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "digits",
            (3, 32, 32),
            10,
            "handwritten digits (8×8 greyscale scans of the digits 0-9 upsampled to 32×32 RGB)",
        ),
        Dataset(
            "cifar10",
            (3, 32, 32),
            10,
            "CIFAR-10 (32×32 colour photographs of 10 object classes)",
            aliases=("cifar-10",),
            torchvision_class="CIFAR10",
            expected_files="cifar-10-batches-py/",
            random_crop=True,
            horizontal_flip=True,
        ),
        Dataset(
            "cifar100",
            (3, 32, 32),
            100,
            "CIFAR-100 (32×32 colour photographs of 100 object classes)",
            aliases=("cifar-100",),
            torchvision_class="CIFAR100",
            expected_files="cifar-100-python/",
            random_crop=True,
            horizontal_flip=True,
        ),
        Dataset(
            "svhn",
            (3, 32, 32),
            10,
            "SVHN (32×32 colour photographs of house-number digits 0-9)",
            torchvision_class="SVHN",
            expected_files="train_32x32.mat and test_32x32.mat",
            random_crop=True,
        ),
        Dataset(
            "mnist",
            (1, 28, 28),
            10,
            "MNIST (28×28 greyscale handwritten digits 0-9)",
            torchvision_class="MNIST",
            expected_files="MNIST/raw/",
        ),
        Dataset(
            "fashion_mnist",
            (1, 28, 28),
            10,
            "Fashion-MNIST (28×28 greyscale photographs of 10 kinds of clothing)",
            aliases=("fashion-mnist",),
            torchvision_class="FashionMNIST",
            expected_files="FashionMNIST/raw/",
        ),
    )
}
NAMES = tuple(CATALOGUE)
TORCHVISION = tuple(name for name, d in CATALOGUE.items() if d.torchvision_class)
_ALIASES = {alias: d.name for d in CATALOGUE.values() for alias in d.aliases}


def lookup(name: str) -> Dataset | None:
    """The dataset a name or alias means; None when the catalogue has no such dataset."""
    return CATALOGUE.get(name) or CATALOGUE.get(_ALIASES.get(name, ""))
