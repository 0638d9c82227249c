"""Fingerprints: the fast lexer agrees with tokenize; shingles and MinHash behave as documented."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from archloop.lemur import iter_model_sources, lemur_wheel
from services.novelty.fingerprint import (
    _POLY,
    Lexer,
    NotPython,
    _mix,
    _token_hashes,
    exact_jaccard,
    fallback_tokens,
    fast_python_tokens,
    fingerprint_source,
    minhash_signature,
    python_tokens,
    shingle_hashes,
    tokenize_source,
)
from services.novelty.tests.variants import make_variant

EDGE_CASES = [
    '"""Module docstring."""\nimport torch\n',
    'class A:\n    \'doc\'\n    x = 1\n    def f(self):\n        """doc"""\n        return \'no doc\'\n',
    "x = ('a' 'b'\n     'c')\n'bare' 'string' 'statement'\n",
    "s = f'{x!r:>{width}}' + rb'\\d+' + Br\"x\" + u'ü'\n",
    "n = 1_000 + 0x_FF + 0o17 + 0b1_0 + 1e-3j + .5 + 5. + 3.14e+10\n",
    "def f(a: int = 1, *args, **kw) -> None:\n    x **= 2; y //= 3; z @= w; b = (c := 4)\n    return ...\n",
    "total = a + \\\n    b\nitems = [\n    1,  # one\n    2,\n]\n",
    "if x:\n\tif y:\n\t\tpass\n\telse:\n\t\tz = 1\n",
    "größe = 3\nπ = 3.14159\n",
    "a = 1\r\nb = 2\r\n",
    "x = 1\n\x0cdef g():\n    pass\n",
    "x = '''multi\nline''' + y\n",
    "class C:\n    def f(self):\n        pass\n  def g(self):\n        pass\n",  # inconsistent dedent
    "x = (1,\n",  # unclosed bracket
    "a = $b\n",
    "s = 'unterminated\n",
    "s = 'continued \\\nstring'\n",
    "x = 1 ! 2\n",
    "  x = 1\n",  # indented first line
    "if a:\n  \t b = 1\n        c = 2\n",  # spaces then a tab, equal to eight columns
    "if a:\n    b = 1\n\n    # comment\n\x0c    c = 2\nd = 3\n",
    "def f():\r\n    return [1,\r\n  2]\r\n",
]


def _tokens_or_none(lexer, source: str) -> list[str] | None:
    """The lexer's tokens, or None where it declines (tokenize rejects; the fast lexer defers)."""
    try:
        return lexer(source)
    except ValueError:
        return None


@pytest.mark.parametrize("source", EDGE_CASES)
def test_fast_lexer_agrees_with_tokenize_on_edge_cases(source: str) -> None:
    expected = _tokens_or_none(python_tokens, source)
    fast = _tokens_or_none(fast_python_tokens, source)
    if fast is not None:
        assert fast == expected
    tokens, lexer = tokenize_source(source)
    if expected is not None:
        assert (tokens, lexer) == (expected, Lexer.PYTHON)
    else:
        assert lexer == Lexer.FALLBACK


@pytest.mark.slow
def test_fast_lexer_agrees_with_tokenize_on_the_lemur_corpus() -> None:
    compared = deferred = 0
    for name, source in iter_model_sources(lemur_wheel()):
        expected = _tokens_or_none(python_tokens, source)
        fast = _tokens_or_none(fast_python_tokens, source)
        if fast is None:
            deferred += 1
            continue
        if expected is None:
            # tokenize 3.11 rejects lines holding only a backslash; the compiler accepts them.
            ast.parse(source)
        else:
            assert fast == expected, name
            compared += 1
    assert compared > 10_000
    assert deferred < 20


def test_docstrings_and_comments_do_not_count() -> None:
    plain = "def f(x):\n    return x + 1\n"
    noisy = 'def f(x):\n    """Add one."""\n    # comment\n\n    return x + 1  # trailing\n'
    assert (
        python_tokens(plain)
        == python_tokens(noisy)
        == ["def", "f", "(", "x", ")", ":", "return", "x", "+", "1"]
    )


def test_fallback_lexer_keeps_the_structure_of_broken_code() -> None:
    assert fallback_tokens("def f(:\n  return x ** 2 # c\n") == [
        "def",
        "f",
        "(",
        ":",
        "return",
        "x",
        "**",
        "2",
    ]
    tokens, lexer = tokenize_source("def f(:\n  x = [1, 2\n")
    assert lexer is Lexer.FALLBACK and tokens[:3] == ["def", "f", "("]
    assert tokenize_source("a\x00b")[1] is Lexer.FALLBACK


def test_shingles() -> None:
    tokens = [str(i) for i in range(12)]
    assert shingle_hashes(tokens, 10).size == 3
    assert shingle_hashes(tokens[:4], 10).size == 1  # shorter than k: one shingle
    assert shingle_hashes([], 10).size == 0
    assert shingle_hashes(["a"] * 30, 10).size == 1  # a set: repeats count once
    assert not np.intersect1d(shingle_hashes(tokens[:4], 10), shingle_hashes(tokens[:4], 3)).size


def test_a_shingle_hash_is_the_polynomial_of_its_token_hashes() -> None:
    """The all-windows-at-once computation equals the definition, window by window (stored
    signatures depend on these exact values)."""
    rng = __import__("random").Random(2)
    poly, modulus = int(_POLY), 2**64
    for count, k in [(1, 10), (9, 10), (10, 10), (11, 10), (300, 10), (40, 3), (25, 1)]:
        tokens = [rng.choice(["x", "=", "nn", ".", "Conv2d", "(", ")", "self", "3"]) for _ in range(count)]
        width = min(k, count)
        values = []
        for start in range(count - width + 1):
            value = 0
            for token in tokens[start : start + width]:
                value = (value * poly + int(_token_hashes([token])[0])) % modulus
            values.append(value ^ width)
        expected = np.unique(_mix(np.array(values, dtype=np.uint64)))
        assert np.array_equal(shingle_hashes(tokens, k), expected), (count, k)


def test_estimate_tracks_exact_jaccard() -> None:
    models = [source for _, (_, source) in zip(range(60), iter_model_sources(lemur_wheel()), strict=False)]
    a = fingerprint_source(models[10], 10, 256, 1)
    for other in models[11:40]:
        b = fingerprint_source(other, 10, 256, 1)
        estimate = float((a.signature == b.signature).mean())
        assert abs(estimate - exact_jaccard(a.shingles, b.shingles)) < 0.12  # > 4 standard deviations


def test_signature_is_stable_across_processes() -> None:
    code = "import torch.nn as nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return x\n"
    here = fingerprint_source(code, 10, 256, 1).signature.tolist()
    script = (
        "import json,sys; from services.novelty.fingerprint import fingerprint_source as f;"
        "print(json.dumps(f(sys.stdin.read(),10,256,1).signature.tolist()))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], input=code, capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}, cwd=root)  # fmt: skip
    assert here == __import__("json").loads(out.stdout)


def test_sources_the_fast_lexer_calls_not_python_are_rejected_by_tokenize_too() -> None:
    """Truncated programs (as an LLM leaves them at its token limit) skip tokenize: check that is safe."""
    rng = __import__("random").Random(5)
    sources = [s for _, (_, s) in zip(range(400), iter_model_sources(lemur_wheel()), strict=False)]
    skipped = 0
    for source in sources:
        cut = source[: rng.randrange(len(source) // 4, len(source))]
        try:
            fast_python_tokens(cut)
        except NotPython:
            skipped += 1
            assert _tokens_or_none(python_tokens, cut) is None
        except ValueError:
            pass
    assert skipped > 50


def test_edited_sources_the_fast_lexer_decides_agree_with_tokenize() -> None:
    """Edits (deleted or copied lines) break indentation and brackets. Where the fast lexer answers
    (tokens or NotPython) tokenize must give the same answer; it may only defer (ValueError)."""
    rng = __import__("random").Random(11)
    sources = [s for _, (_, s) in zip(range(300), iter_model_sources(lemur_wheel()), strict=False)]
    decided = {"tokens": 0, "not_python": 0}
    for _ in range(400):
        variant = make_variant(rng.choice(sources), rng, rng.randint(1, 30))[0]
        if rng.random() < 0.3:
            variant = variant[: rng.randrange(len(variant) // 3, len(variant) + 1)]
        expected = _tokens_or_none(python_tokens, variant)
        try:
            fast = fast_python_tokens(variant)
        except NotPython:
            decided["not_python"] += 1
            assert expected is None
            continue
        except ValueError:
            continue
        decided["tokens"] += 1
        if expected is None:  # tokenize 3.11 rejects lines holding only a backslash, as above
            assert any(line.strip() == "\\" for line in variant.splitlines())
        else:
            assert fast == expected
    assert decided["tokens"] > 100 and decided["not_python"] > 100, decided


@pytest.mark.parametrize("size", [0, 1, 7, 600, 5000])
def test_minhash_signature_is_datasketch_update_batch(size: int) -> None:
    hashes = np.random.default_rng(size).integers(0, 2**64, size=size, dtype=np.uint64)
    reference = MinHash(num_perm=256, seed=1, hashfunc=lambda value: value & 0xFFFFFFFF, scheme="affine32")
    reference.update_batch(hashes.tolist())
    assert np.array_equal(minhash_signature(hashes, 256, 1), reference.hashvalues.astype(np.uint32))
