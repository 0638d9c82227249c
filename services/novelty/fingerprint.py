"""Code fingerprints: lexer tokens → k-token shingles → 64-bit shingle hashes → MinHash signature.

Following NNGPT (docs/method.md#novelty-filter): Python's own `tokenize` lexer supplies the tokens, with
comments,
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
import threading
import tokenize
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from datasketch import MinHash

SCHEME = "affine32"  # datasketch 2.x permutation scheme; signatures of different schemes never mix


class NotPython(ValueError):
    """tokenize would certainly reject this source too (brackets unbalanced at the end: tokenize's
    "EOF in multi-line statement"; an inconsistent dedent: its IndentationError), so there is no
    need to ask it. Truncated LLM output ends so, and so does code with lines lost in an edit."""


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

# Strings first so '#' inside a string is not a comment; comments are matched to be dropped. One
# capturing group, the token, so findall returns its text; whitespace before it is consumed by the
# match (skipping it position by position tried every alternative at each space of an indentation).
_FALLBACK_TOKEN = re.compile(
    r"""
    \s*(
    [rRbBuUfF]{0,2}(?:"""
    r'''"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\''''
    r"""|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')   # string
    | \#[^\n]*                                        # comment
    | [^\W\d]\w*                                      # name
    | \d[\w.]*                                        # number
    | \*\*=?|//=?|->|<<=?|>>=?|[-+*/%&|^<>=!@:]=|\S   # operator
    )""",
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
    # Only a comment match starts with "#" (strings are tried first, and "#" alone is a comment).
    return [text for text in _FALLBACK_TOKEN.findall(source) if text[0] != "#"]


def _non_capturing(pattern: str) -> str:
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", pattern)


# tokenize.Special as character classes (a long literal alternation is slow); the loop below still
# checks every operator against tokenize.EXACT_TOKEN_TYPES.
_OPERATOR_PATTERN = r"\*\*=?|//=?|>>=?|<<=?|\.\.\.|->|[-+*/%&|^@<>=!:]=|[(){}\[\],:;.+\-*/%&|^~<>=@]"

# One pass of re.findall over tokenize's own sub-patterns (made non-capturing; the one group is
# the token, so findall returns plain strings). Spaces before a token are consumed by the match
# instead of failing every alternative once per space. Names come first but never swallow a string
# prefix; numbers only where a digit (or a dot and a digit) starts; anything unmatched is a
# one-character token caught below.
_FAST_TOKEN = re.compile(
    r"[ \t\f]*("
    + _non_capturing(
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
    + ")"
)
_OPERATORS = frozenset(tokenize.EXACT_TOKEN_TYPES)
_OPENERS, _CLOSERS = frozenset("([{"), frozenset(")]}")

# Token kinds for the loop in fast_python_tokens; a newline token's kind is the next line's
# indentation column (>= 0).
_PLAIN, _OPENER, _CLOSER, _STRING, _SKIPPED = -1, -2, -3, -4, -5
_KINDS: dict[str, int] = {}
_KIND_CACHE_LIMIT = 200_000


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


def _token_kind(text: str) -> int:
    """The kind of one regex match; ValueError where only tokenize can say. Names, numbers,
    operators and newlines repeat and are cached (comments and strings are not)."""
    first = text[0]
    if first == "#":
        return _SKIPPED
    if len(text) > 1 and text[-1] in "'\"":
        return _STRING
    if first == "\n" or first == "\r":
        kind = _indent_column(text.lstrip("\r\n"))
    elif first == "\\":
        if len(text) == 1:
            raise ValueError("a stray backslash needs tokenize")
        kind = _SKIPPED  # a backslash continuation
    elif first.isidentifier() or first.isdigit() or text in _OPERATORS or first == ".":
        kind = _OPENER if text in _OPENERS else _CLOSER if text in _CLOSERS else _PLAIN
    else:
        raise ValueError(f"character {text!r} needs tokenize")
    if len(_KINDS) >= _KIND_CACHE_LIMIT:
        _KINDS.clear()
    _KINDS[text] = kind
    return kind


def fast_python_tokens(source: str) -> list[str]:
    """The tokens `python_tokens` returns, several times faster: one regex pass built from
    tokenize's own sub-patterns, with bracket depth, logical lines and the dedent check done here.

    Raises NotPython where tokenize certainly fails too (brackets open or over-closed at the end:
    "EOF in multi-line statement"; a dedent to a column no enclosing block has: IndentationError),
    and ValueError wherever it is not certain to agree (a character tokenize calls an error, a
    string continued by a backslash); the caller then asks tokenize itself. Tested against tokenize
    on the whole LEMUR corpus and on thousands of edited and truncated variants.

    More closers than openers is not an error to tokenize: its bracket level goes negative, every
    line counts as a continuation (no indentation rules) and newlines still end logical lines,
    until the level is back at zero. The loop below follows it there.
    """
    tokens: list[str] = []
    append = tokens.append
    kinds = _KINDS
    line_start = 0  # where the current logical line's tokens begin in `tokens`
    in_line = False  # the current logical line has a token
    only_strings = True
    depth = 0
    indents = [0]
    column = 0
    # A newline token carries the next line's indentation; the leading "\n" gives line 1 one too.
    for text in _FAST_TOKEN.findall("\n" + source):
        kind = kinds.get(text)
        if kind == _PLAIN and in_line:  # most tokens: a name, number or operator inside a line
            only_strings = False
            append(text)
            continue
        if kind is None:
            kind = _token_kind(text)
        if kind >= 0:  # a newline
            column = kind
            if depth <= 0 and in_line:
                if only_strings:  # a docstring or a bare string statement
                    del tokens[line_start:]
                line_start, in_line, only_strings = len(tokens), False, True
            continue
        if kind == _SKIPPED:
            continue
        if not in_line:
            in_line = True
            if depth == 0:
                if column > indents[-1]:
                    indents.append(column)
                while column < indents[-1]:
                    indents.pop()
                if column != indents[-1]:
                    raise NotPython("a dedent to a column no enclosing block has")
        if kind != _STRING:
            only_strings = False
            if kind == _OPENER:
                depth += 1
            elif kind == _CLOSER:
                depth -= 1
        append(text)
    if depth:
        raise NotPython("unbalanced brackets at the end")
    if in_line and only_strings:
        del tokens[line_start:]
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


def _token_hashes(tokens: list[str]) -> np.ndarray:
    """blake2b (64-bit) of every token, through a process-wide cache: only new tokens are hashed in
    Python, the lookups run in C. A full cache is replaced, never cleared, so a thread reading the
    old one meanwhile still finds every token it added."""
    global _TOKEN_HASHES
    cache = _TOKEN_HASHES
    missing = set(tokens).difference(cache)
    if missing:
        if len(cache) + len(missing) > _TOKEN_CACHE_LIMIT:
            cache = _TOKEN_HASHES = {}
        for token in missing:
            digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            cache[token] = int.from_bytes(digest, "little")
    return np.fromiter(map(cache.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit word."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """P**j and P**-j (mod 2**64) for j < count; P is odd, so it has an inverse mod 2**64."""
    global _POWERS
    if len(_POWERS[0]) < count:
        size = max(count, 2 * len(_POWERS[0]), 4096)
        inverse = np.uint64(pow(int(_POLY), -1, 2**64))
        one = np.ones(1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            up = np.concatenate([one, np.cumprod(np.full(size - 1, _POLY, dtype=np.uint64))])
            down = np.concatenate([one, np.cumprod(np.full(size - 1, inverse, dtype=np.uint64))])
        _POWERS = (up, down)
    return _POWERS


def shingle_hashes(tokens: list[str], k: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the k-token shingles (one shingle if fewer than k tokens).

    Each token is hashed once (blake2b, cached); a shingle's hash is the polynomial
    sum_j t[i+j]·P**(w-1-j) over its w tokens' hashes (mod 2**64), finalised by splitmix64. All
    windows at once: with u[j] = t[j]·P**-j and C its running sum, window i is
    P**(i+w-1)·(C[i+w] - C[i]); five array operations whatever k is.
    """
    if not tokens:
        return np.empty(0, dtype=np.uint64)
    token_hashes = _token_hashes(tokens)
    count = len(tokens)
    width = min(k, count)
    windows = count - width + 1
    up, down = _powers(count)
    with np.errstate(over="ignore"):
        running = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(token_hashes * down[:count])])
        combined = up[width - 1 : width - 1 + windows] * (running[width:] - running[:windows])
        return np.unique(_mix(combined ^ np.uint64(width)))


@lru_cache(maxsize=16)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_UPDATE_ROWS = 2048  # shingles per step: the (rows × permutations) scratch matrix is 2 MiB
_SCRATCH = threading.local()


def _scratch(num_perm: int) -> np.ndarray:
    """This thread's (rows × permutations) work matrix, allocated once. A fresh 0.5 MB temporary
    per check cost more in page faults (glibc maps and unmaps blocks that size) than the arithmetic."""
    matrix = getattr(_SCRATCH, "matrix", None)
    if matrix is None or matrix.shape[1] != num_perm:
        matrix = _SCRATCH.matrix = np.empty((_UPDATE_ROWS, num_perm), dtype=np.uint32)
    return matrix


def minhash_signature(hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """datasketch's MinHash ("affine32" scheme, its permutations) of the low 32 bits of the shingle
    hashes, as uint32.

    The same arithmetic as `MinHash(hashfunc=low32).update_batch(hashes)`, computed from the array
    directly: update_batch calls the hash function once per value in Python (0.25 ms of a 1.4 ms
    in-process check before; this takes 0.1 ms). A test holds the two bit-identical.
    """
    a, b = _permutations(num_perm, seed)
    signature = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    if not hashes.size:
        return signature
    s1, m1, s2, m2, s3 = _FMIX32
    scratch = _scratch(num_perm)
    with np.errstate(over="ignore"):
        values = (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        values ^= values >> s1  # MurmurHash3's finaliser, as datasketch pre-mixes every input
        values *= m1
        values ^= values >> s2
        values *= m2
        values ^= values >> s3
        for start in range(0, values.size, _UPDATE_ROWS):
            chunk = values[start : start + _UPDATE_ROWS]
            permuted = scratch[: chunk.size]
            np.multiply(chunk[:, None], a, out=permuted)  # uint32: the wrap-around is the modulus
            permuted += b
            np.minimum(signature, permuted.min(axis=0), out=signature)
    return signature


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
