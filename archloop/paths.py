"""Where ArchLoop keeps its files; the one place these formulas are written.

$ARCHLOOP_HOME   (default ~/.archloop)         state: the local stack, corpora, runs, checkpoints
$ARCHLOOP_CACHE  (default ~/.cache/archloop)   downloads checked by sha256 (LEMUR, SmolLM2) and
                                               models converted from them
$ARCHLOOP_CORPUS_DIR (default <home>/corpus/<version>)   the corpus the loop and trainer read
"""

from __future__ import annotations

import os
from pathlib import Path

CORPUS_VERSION = "lemur-v3"
"""The corpus version built and read by default; lemur-v2 stays buildable (`--version lemur-v2`)."""


def archloop_home() -> Path:
    return Path(os.environ.get("ARCHLOOP_HOME") or Path.home() / ".archloop")


def cache_dir() -> Path:
    return Path(os.environ.get("ARCHLOOP_CACHE") or Path.home() / ".cache" / "archloop")


def corpus_dir(version: str = CORPUS_VERSION, home: Path | None = None) -> Path:
    """$ARCHLOOP_CORPUS_DIR when set, else `<home>/corpus/<version>` (home: $ARCHLOOP_HOME)."""
    return Path(os.environ.get("ARCHLOOP_CORPUS_DIR") or (home or archloop_home()) / "corpus" / version)
