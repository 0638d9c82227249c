"""Code fingerprints: lexer tokens → k-token shingles → 64-bit shingle hashes → MinHash signature.

Following NNGPT (BRIEF §4): Python's own `tokenize` lexer supplies the tokens, with comments,
docstrings (and any other statement that is only a string), blank lines and indentation dropped;
keywords, identifiers, literals and operators are kept verbatim. Shingles are k contiguous tokens
(k = 10 by default); a source shorter than k tokens is one shingle. Sources Python's lexer rejects
get the same treatment from a regex lexer, and the result says which lexer ran.

Each shingle is hashed to 64 bits (a polynomial over cached per-token blake2b hashes). The set of
those hashes is the exact-Jaccard ground truth; their low 32 bits feed datasketch's MinHash (256
permutations, fixed seed), whose signature estimates the Jaccard of two shingle sets as the share
of equal slots.

Python's tokenize is pure Python in 3.11 and was most of the cost of a check, so sources go first
through `fast_python_tokens`, a one-pass regex lexer built from tokenize's own patterns that
defers to tokenize whenever it is not certain to agree (tested on the whole LEMUR corpus).
"""

from __future__ import annotations

import enum
import hashlib
import io
import re
import tokenize
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from datasketch import MinHash

SCHEME = "affine32"  # datasketch 2.x permutation scheme; signatures of different schemes never mix


class NotPython(ValueError):
    """tokenize would certainly reject this source too (brackets still open at the end: tokenize's
    "EOF in multi-line statement"), so there is no need to ask it. Truncated LLM output ends so."""


class Lexer(enum.Enum):
    PYTHON = "python"
    FALLBACK = "fallback"


_DROPPED = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}

# Strings first so '#' inside a string is not a comment; comments are matched to be dropped.
_FALLBACK_TOKEN = re.compile(
    r"""
    (?P<string>[rRbBuUfF]{0,2}("""
    r'''"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\''''
    r"""|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
    | (?P<comment>\#[^\n]*)
    | (?P<name>[^\W\d]\w*)
    | (?P<number>\d[\w.]*)
    | (?P<op>\*\*=?|//=?|->|<<=?|>>=?|[-+*/%&|^<>=!@:]=|\S)
    """,
    re.VERBOSE,
)


def python_tokens(source: str) -> list[str]:
    """Tokens from Python's lexer; raises ValueError when it rejects the source."""
    lines: list[list[tokenize.TokenInfo]] = [[]]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.ERRORTOKEN and not tok.string.isspace():
                raise ValueError(f"unexpected character {tok.string!r} at line {tok.start[0]}")
            if tok.type == tokenize.NEWLINE:
                lines.append([])
            elif tok.type not in _DROPPED and tok.type != tokenize.ERRORTOKEN:
                lines[-1].append(tok)
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ValueError(str(exc)) from None
    tokens: list[str] = []
    for line in lines:
        # A logical line made only of strings is a docstring or a bare string statement.
        if line and all(tok.type == tokenize.STRING for tok in line):
            continue
        tokens.extend(tok.string for tok in line)
    return tokens


def fallback_tokens(source: str) -> list[str]:
    """A forgiving regex lexer for text Python's lexer rejects (truncated output, prose, garbage)."""
    return [m.group() for m in _FALLBACK_TOKEN.finditer(source) if m.lastgroup != "comment"]


def _non_capturing(pattern: str) -> str:
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", pattern)


# tokenize.Special as character classes (a long literal alternation is slow); the loop below still
# checks every operator against tokenize.EXACT_TOKEN_TYPES.
_OPERATOR_PATTERN = r"\*\*=?|//=?|>>=?|<<=?|\.\.\.|->|[-+*/%&|^@<>=!:]=|[(){}\[\],:;.+\-*/%&|^~<>=@]"

# One pass of re.findall over tokenize's own sub-patterns (made non-capturing, so findall returns
# plain strings). Names come first but never swallow a string prefix; numbers only where a digit
# (or a dot and a digit) starts; anything unmatched is a one-character token caught below.
_FAST_TOKEN = re.compile(
    _non_capturing(
        "|".join(
            [
                r"(?![rRbBuUfF]{1,2}['\"])[^\W\d]\w*",
                r"\r?\n[ \t\f]*",  # a newline with the next line's indentation
                f"(?=[0-9]|\\.[0-9]){tokenize.Number}",
                _OPERATOR_PATTERN,
                tokenize.Comment,
                f"{tokenize.StringPrefix}(?:'''{tokenize.Single3}|\"\"\"{tokenize.Double3})",
                tokenize.String,
                r"\\\r?\n",
                r"[^ \t\f\r\n]",
            ]
        )
    )
)
_OPERATORS = frozenset(tokenize.EXACT_TOKEN_TYPES)
_OPENERS, _CLOSERS = frozenset("([{"), frozenset(")]}")
_QUOTES = frozenset("'\"")


def _indent_column(indentation: str) -> int:
    """Width of a line's leading whitespace, counted as tokenize does (tabs to 8, form feed resets)."""
    if not indentation.strip(" "):
        return len(indentation)  # spaces only: the common case
    column = 0
    for char in indentation:
        if char == " ":
            column += 1
        elif char == "\t":
            column = (column // 8 + 1) * 8
        elif char == "\f":
            column = 0
    return column


def fast_python_tokens(source: str) -> list[str]:
    """The tokens `python_tokens` returns, several times faster: one regex pass built from
    tokenize's own sub-patterns, with bracket depth, logical lines and the dedent check done here.

    Raises ValueError wherever it is not certain to agree with tokenize (a character tokenize calls
    an error, unbalanced brackets, a string continued by a backslash, an inconsistent dedent); the
    caller then asks tokenize itself. Tested against tokenize on the whole LEMUR corpus.
    """
    tokens: list[str] = []
    line: list[str] = []
    only_strings = True
    depth = 0
    indents = [0]
    indentation = ""
    # A newline token carries the next line's indentation; the leading "\n" gives line 1 one too.
    for text in _FAST_TOKEN.findall("\n" + source):
        first = text[0]
        if first == "#":
            continue
        if first == "\n" or first == "\r":
            indentation = text.lstrip("\r\n")
            if depth == 0 and line:
                if not only_strings:
                    tokens.extend(line)
                line, only_strings = [], True
            continue
        if first == "\\":
            if len(text) > 1:
                continue  # a backslash continuation
            raise ValueError("a stray backslash needs tokenize")
        is_string = len(text) > 1 and text[-1] in _QUOTES
        if not (is_string or first.isidentifier() or first.isdigit() or text in _OPERATORS or first == "."):
            raise ValueError(f"character {text!r} needs tokenize")
        if not line and depth == 0:
            column = _indent_column(indentation)
            if column > indents[-1]:
                indents.append(column)
            while column < indents[-1]:
                indents.pop()
            if column != indents[-1]:
                raise ValueError("inconsistent dedent")
        only_strings = only_strings and is_string
        if text in _OPENERS:
            depth += 1
        elif text in _CLOSERS:
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        line.append(text)
    if depth:
        raise NotPython("unclosed brackets at the end")
    if line and not only_strings:
        tokens.extend(line)
    return tokens


def tokenize_source(source: str) -> tuple[list[str], Lexer]:
    if "\x00" not in source:
        try:
            return fast_python_tokens(source), Lexer.PYTHON
        except NotPython:
            pass
        except ValueError:
            try:
                return python_tokens(source), Lexer.PYTHON
            except ValueError:
                pass
    return fallback_tokens(source.replace("\x00", " ")), Lexer.FALLBACK


_TOKEN_HASHES: dict[str, int] = {}
_TOKEN_CACHE_LIMIT = 1_000_000
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio)


def _token_hash(token: str) -> int:
    value = _TOKEN_HASHES.get(token)
    if value is None:
        if len(_TOKEN_HASHES) >= _TOKEN_CACHE_LIMIT:
            _TOKEN_HASHES.clear()
        digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        value = _TOKEN_HASHES[token] = int.from_bytes(digest, "little")
    return value


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit word."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def shingle_hashes(tokens: list[str], k: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the k-token shingles (one shingle if fewer than k tokens).

    Each token is hashed once (blake2b, cached); a shingle's hash is a polynomial over its tokens'
    hashes (mod 2**64), finalised by splitmix64, computed for all windows at once with numpy.
    """
    if not tokens:
        return np.empty(0, dtype=np.uint64)
    token_hashes = np.fromiter(map(_token_hash, tokens), dtype=np.uint64, count=len(tokens))
    width = min(k, len(tokens))
    windows = len(tokens) - width + 1
    with np.errstate(over="ignore"):
        combined = np.zeros(windows, dtype=np.uint64)
        for offset in range(width):
            combined = combined * _POLY + token_hashes[offset : offset + windows]
        return np.unique(_mix(combined ^ np.uint64(width)))


@lru_cache(maxsize=16)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


def _low32(value: int) -> int:
    return value & 0xFFFFFFFF


def minhash_signature(hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """datasketch MinHash over the shingle hashes; the signature as uint32 (all values are < 2**32)."""
    minhash = MinHash(
        num_perm=num_perm,
        seed=seed,
        hashfunc=_low32,
        permutations=_permutations(num_perm, seed),
        scheme=SCHEME,
    )
    if hashes.size:
        minhash.update_batch(hashes.tolist())
    return minhash.hashvalues.astype(np.uint32)


def estimated_jaccard(query: np.ndarray, signatures: np.ndarray) -> np.ndarray:
    """Share of equal MinHash slots between one signature and each row of `signatures`."""
    return (signatures == query).mean(axis=-1)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique hash arrays."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


@dataclass(frozen=True)
class Fingerprint:
    lexer: Lexer
    token_count: int
    shingles: np.ndarray  # sorted unique uint64 shingle hashes
    signature: np.ndarray  # uint32[num_perm]


def fingerprint_tokens(tokens: list[str], lexer: Lexer, k: int, num_perm: int, seed: int) -> Fingerprint:
    shingles = shingle_hashes(tokens, k)
    return Fingerprint(lexer, len(tokens), shingles, minhash_signature(shingles, num_perm, seed))


def fingerprint_source(source: str, k: int, num_perm: int, seed: int) -> Fingerprint:
    tokens, lexer = tokenize_source(source)
    return fingerprint_tokens(tokens, lexer, k, num_perm, seed)


def as_minhash(signature: np.ndarray, num_perm: int, seed: int) -> MinHash:
    """A datasketch MinHash carrying a stored signature, for MinHashLSH insert and query."""
    return MinHash(
        num_perm=num_perm,
        seed=seed,
        hashvalues=signature.astype(np.uint64),
        permutations=_permutations(num_perm, seed),
        scheme=SCHEME,
    )
