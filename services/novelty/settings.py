"""Settings of the novelty service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, non_negative, one_of, port_number, positive, setting


@dataclass(frozen=True)
class NoveltySettings(ServiceSettings):
    port: int = setting(50054, "gRPC port; 0 picks a free one", check=port_number)
    db_path: str = setting("novelty.sqlite3", "SQLite database holding every collection and entry")
    sqlite_journal_mode: str = setting(
        "wal", "SQLite journal mode", check=one_of("wal", "delete", "truncate")
    )
    sqlite_busy_timeout_ms: int = setting(
        5000, "how long a write waits for a locked database", check=positive
    )
    max_code_bytes: int = setting(256 * 1024, "largest source accepted (UTF-8 bytes)", check=positive)
    inline_check_max_chars: int = setting(
        16 * 1024,
        "checks of sources up to this many characters run on the event loop (about a millisecond, less"
        " than a thread hop adds); larger ones and every write run in a worker thread; 0: all in threads",
        check=non_negative,
    )
