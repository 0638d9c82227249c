"""Delta application on real unified diffs (difflib's, of real edits of the packaged baseline) and on the
ways LLM diffs go wrong: offset hunks, wrong or missing headers, blank context lines, malformed lines."""

from __future__ import annotations

import difflib

import pytest

from archloop.prompts import BASELINE_FILE as BASELINE
from services.generator.delta import DeltaError, apply_response, extract_diff, parse_hunks

BASE = BASELINE.read_text()


def _edit(code: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert old in code, old
        code = code.replace(old, new, 1)
    return code


WIDER = _edit(
    BASE,
    ("nn.Conv2d(64, 128, kernel_size=3, padding=1)", "nn.Conv2d(64, 192, kernel_size=3, padding=1)"),
    ("nn.BatchNorm2d(128)", "nn.BatchNorm2d(192)"),
    ("nn.Linear(128, out_shape[0])", "nn.Linear(192, out_shape[0])"),
)
GELU_AND_SGD = _edit(
    BASE,
    (
        "nn.ReLU(inplace=True),\n            nn.MaxPool2d(2),\n            nn.Conv2d(32",
        "nn.GELU(),\n            nn.MaxPool2d(2),\n            nn.Conv2d(32",
    ),
    ("momentum=prm['momentum'])", "momentum=prm['momentum'], nesterov=True)"),
)


def _diff(old: str, new: str, context: int = 3) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(True), new.splitlines(True), "a/model.py", "b/model.py", n=context
        )
    )


@pytest.mark.parametrize("edited", [WIDER, GELU_AND_SGD], ids=["one-hunk", "two-hunks"])
@pytest.mark.parametrize("context", [0, 1, 3])
def test_a_clean_diff_reproduces_the_edit(edited: str, context: int) -> None:
    program, diff = apply_response(BASE, f"Here you go:\n```diff\n{_diff(BASE, edited, context)}```\n")
    assert program == edited
    assert len(diff) < len(program)


def test_hunks_whose_line_numbers_are_off_still_apply_by_content() -> None:
    diff = _diff(BASE, GELU_AND_SGD)
    shifted = "\n".join(
        line.replace("@@ -1", "@@ -40").replace("@@ -4", "@@ -9") if line.startswith("@@") else line
        for line in diff.splitlines()
    )
    assert apply_response(BASE, shifted)[0] == GELU_AND_SGD


def test_wrong_counts_bare_headers_and_no_headers_at_all() -> None:
    diff = _diff(BASE, WIDER)
    bare = "\n".join("@@" if line.startswith("@@") else line for line in diff.splitlines())
    assert apply_response(BASE, f"```diff\n{bare}\n```")[0] == WIDER
    wrong_counts = "\n".join(
        "@@ -1,99 +1,2 @@" if line.startswith("@@") else line for line in diff.splitlines()
    )
    assert apply_response(BASE, wrong_counts)[0] == WIDER
    # only -/+ lines, no file headers and no @@ (a one-line change)
    headless = (
        "-            nn.Linear(128, out_shape[0]),\n+            nn.Linear(128, out_shape[0], bias=False),\n"
    )
    program, _ = apply_response(BASE, f"```diff\n{headless}```")
    assert "nn.Linear(128, out_shape[0], bias=False)" in program


def test_blank_context_lines_without_their_space_and_trailing_whitespace_are_tolerated() -> None:
    diff = _diff(BASE, GELU_AND_SGD)
    damaged = "\n".join(
        ("" if line == " " else line.rstrip() + "  ") if line.startswith(" ") else line
        for line in diff.splitlines()
    )
    assert apply_response(BASE, damaged)[0] == GELU_AND_SGD


def test_a_diff_in_an_unlabelled_fence_is_found() -> None:
    response = "```\n" + _diff(BASE, WIDER) + "```"
    assert extract_diff(response).startswith("--- a/model.py")
    assert apply_response(BASE, response)[0] == WIDER


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        ("I would widen the network.", "no_diff"),
        ("```diff\n```", "no_diff"),
        ("```diff\n@@ -1,2 +1,2 @@\n import torch\n*import numpy\n```", "malformed"),
        ("```diff\n@@ -3,1 +3,1 @@\n-    return {'lr', 'mom'}\n+    return {'lr'}\n```", "context_not_found"),
        ("```diff\n@@ -1,1 +1,1 @@\n import torch\n```", "no_change"),
        ("```diff\n@@ -9,1 +9,1 @@\n-class Net(nn.Module):\n+class Net(nn.Module)\n```", "does_not_parse"),
    ],
    ids=["prose", "empty", "malformed", "context", "no-change", "broken-python"],
)
def test_each_failure_has_its_kind(response: str, kind: str) -> None:
    with pytest.raises(DeltaError) as caught:
        apply_response(BASE, response)
    assert caught.value.kind == kind and str(caught.value)


def test_parse_keeps_added_and_removed_lines_apart() -> None:
    (hunk,) = parse_hunks("@@ -1,2 +1,2 @@\n a\n-b\n+c\n")
    assert hunk.old == ["a", "b"] and hunk.new == ["a", "c"] and hunk.old_start == 1
