"""Delta mode: pull a unified diff out of an LLM answer and apply it to the baseline, robustly.

LLM diffs are often broken in form (docs/method.md#generation-modes), so the hunk headers' numbers are
only hints:
1. extract: the first ```diff / ```patch block, else the text from the first `---`/`@@` line;
2. parse: every `@@` starts a hunk; body lines are context (' '), removed ('-') or added ('+'); a blank
   line counts as an empty context line (models drop the leading space); `\\ No newline` is ignored; a
   diff of -/+ lines without any `@@` is one hunk; counts are re-derived from the bodies;
3. locate: a hunk's old lines (context + removed) are searched in the baseline by content, exactly,
   then ignoring trailing whitespace, then ignoring all surrounding whitespace; of several matches the
   one nearest the header's line number (shifted by earlier hunks) wins; hunks apply in order;
4. parse the result with `ast` (a diff that yields broken Python fails here).

A failure raises DeltaError with a `kind` the ledger records: no_diff, malformed, context_not_found,
no_change, does_not_parse.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

KINDS = ("no_diff", "malformed", "context_not_found", "no_change", "does_not_parse")

_BLOCK = re.compile(r"```(?:diff|patch|udiff)[ \t]*\n(.*?)(?:^```|\Z)", re.DOTALL | re.MULTILINE)
_ANY_BLOCK = re.compile(r"```[a-z]*[ \t]*\n(.*?)(?:^```|\Z)", re.DOTALL | re.MULTILINE)
_HEADER = re.compile(r"^@@+ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@+")
_FILE_LINES = ("--- ", "+++ ", "diff --git", "index ", "new file mode", "deleted file mode")


class DeltaError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        assert kind in KINDS, kind
        super().__init__(message)
        self.kind = kind


@dataclass
class Hunk:
    old_start: int | None  # 1-based line of the header, a hint only
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" " | "-" | "+", text)

    @property
    def old(self) -> list[str]:
        return [text for tag, text in self.lines if tag != "+"]

    @property
    def new(self) -> list[str]:
        return [text for tag, text in self.lines if tag != "-"]

    @property
    def changes(self) -> bool:
        return any(tag != " " for tag, _ in self.lines)


def extract_diff(response: str) -> str:
    """The diff text of an answer ('' when there is none)."""
    match = _BLOCK.search(response)
    if match:
        return match.group(1)
    for block in _ANY_BLOCK.finditer(response):
        text = block.group(1)
        if _looks_like_diff(text):
            return text
    lines = response.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("--- ", "@@")):
            return "\n".join(lines[i:])
    return ""


def _looks_like_diff(text: str) -> bool:
    lines = text.splitlines()
    return any(line.startswith("@@") for line in lines) or (
        any(line.startswith("+") for line in lines) and any(line.startswith("-") for line in lines)
    )


def parse_hunks(diff: str) -> list[Hunk]:
    if not diff.strip():
        raise DeltaError("no_diff", "the answer holds no diff")
    hunks: list[Hunk] = []
    current: Hunk | None = None
    for number, line in enumerate(diff.splitlines(), 1):
        if line.startswith("@@"):
            header = _HEADER.match(line)
            current = Hunk(int(header.group(1)) if header else None)
            hunks.append(current)
            continue
        if current is None and line.startswith(_FILE_LINES):
            continue
        if line.startswith("\\"):
            continue  # "\ No newline at end of file"
        if current is None:
            if line.startswith(("+", "-")):
                current = Hunk(None)  # a diff without @@ headers: one hunk
                hunks.append(current)
            elif not line.strip():
                continue
            else:
                raise DeltaError("malformed", f"diff line {number} is outside any hunk: {line[:60]!r}")
        if line == "":
            current.lines.append((" ", ""))
        elif line[0] in " -+":
            current.lines.append((line[0], line[1:]))
        else:
            raise DeltaError(
                "malformed", f"diff line {number} starts with {line[0]!r}, not ' ', '-' or '+': {line[:60]!r}"
            )
    hunks = [h for h in hunks if h.lines]
    if not hunks:
        raise DeltaError("no_diff", "the diff holds no hunk")
    if not any(h.changes for h in hunks):
        raise DeltaError("no_change", "the diff adds and removes nothing")
    return hunks


_NORMALISERS = (lambda s: s, str.rstrip, str.strip)


def _find(lines: list[str], old: list[str], start: int, hint: int | None) -> int | None:
    """Index in `lines` (≥ start) where `old` matches, nearest to `hint`; None when nowhere."""
    for normalise in _NORMALISERS:
        wanted = [normalise(x) for x in old]
        have = [normalise(x) for x in lines]
        matches = [i for i in range(start, len(lines) - len(old) + 1) if have[i : i + len(old)] == wanted]
        if matches:
            return min(matches, key=lambda i: abs(i - hint)) if hint is not None else matches[0]
    return None


def apply_hunks(baseline: str, hunks: list[Hunk]) -> str:
    lines = baseline.splitlines()
    cursor, shift = 0, 0
    for number, hunk in enumerate(hunks, 1):
        hint = None if hunk.old_start is None else max(0, hunk.old_start - 1 + shift)
        old = hunk.old
        while old and not old[-1].strip() and hunk.lines and hunk.lines[-1] == (" ", ""):
            hunk.lines.pop()  # trailing blank context a model added
            old = hunk.old
        if not old:
            at = hint if hint is not None else len(lines)
            if at > len(lines):
                raise DeltaError("context_not_found", f"hunk {number} adds at line {at + 1}, past the end")
        else:
            found = _find(lines, old, cursor, hint)
            if found is None:
                found = _find(lines, old, 0, hint)  # hunks out of order
            if found is None:
                first = next((x for x in old if x.strip()), old[0])
                raise DeltaError(
                    "context_not_found",
                    f"hunk {number}: its old lines (from {first.strip()[:50]!r}) are not in the baseline",
                )
            at = found
        matched, replacement = iter(lines[at : at + len(old)]), []
        for tag, text in hunk.lines:
            if tag == " ":
                replacement.append(next(matched))  # context keeps the baseline's own text
            elif tag == "-":
                next(matched)
            else:
                replacement.append(text)
        lines[at : at + len(old)] = replacement
        cursor = at + len(replacement)
        shift += len(replacement) - len(old)
    return "\n".join(lines) + "\n"


def apply_response(baseline: str, response: str) -> tuple[str, str]:
    """(program, diff text) of an LLM answer; DeltaError when it cannot be applied."""
    diff = extract_diff(response)
    program = apply_hunks(baseline, parse_hunks(diff))
    if program.strip() == baseline.strip():
        raise DeltaError("no_change", "applying the diff leaves the baseline unchanged")
    try:
        ast.parse(program)
    except SyntaxError as exc:
        raise DeltaError(
            "does_not_parse", f"the patched program does not parse: line {exc.lineno}: {exc.msg}"
        ) from None
    return program, diff
