"""Code fingerprints: lexer tokens → k-token shingles → 64-bit shingle hashes → MinHash signature.

Following NNGPT (BRIEF §4): Python's own `tokenize` lexer supplies the tokens, with comments,
docstrings (and any other statement that is only a string), blank lines and indentation dropped;
keywords, identifiers, literals and operators are kept verbatim. Shingles are k contiguous tokens
(k = 10 by default); a source shorter than k tokens is one shingle. Sources Python's lexer rejects
get the same treatment from a regex lexer, and the result says which lexer ran.

Each shingle is hashed once to 64 bits (blake2b). The set of those hashes is the exact-Jaccard
ground truth; its low 32 bits feed datasketch's MinHash (256 permutations, fixed seed), whose
signature estimates the Jaccard between two shingle sets as the share of equal slots.
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

SHINGLE_SEPARATOR = "\x1f"
SCHEME = "affine32"  # datasketch 2.x permutation scheme; signatures of different schemes never mix


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


def tokenize_source(source: str) -> tuple[list[str], Lexer]:
    if "\x00" not in source:
        try:
            return python_tokens(source), Lexer.PYTHON
        except ValueError:
            pass
    return fallback_tokens(source.replace("\x00", " ")), Lexer.FALLBACK


def shingle_hashes(tokens: list[str], k: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the k-token shingles (one shingle if fewer than k tokens)."""
    if not tokens:
        return np.empty(0, dtype=np.uint64)
    count = max(1, len(tokens) - k + 1)
    hashes = np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(
                    SHINGLE_SEPARATOR.join(tokens[i : i + k]).encode("utf-8", "surrogatepass"), digest_size=8
                ).digest(),
                "little",
            )
            for i in range(count)
        ),
        dtype=np.uint64,
        count=count,
    )
    return np.unique(hashes)


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
