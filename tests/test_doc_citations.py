"""The docs cite this repository's own files by name, never by line.

Our own line numbers go stale at every edit, so a citation `path.py:N` (or
`path.py:N-M, K`) of one of our files is refused, and a citation
`path.py: name` must name something in that file (`get_config`'s `kd`
branch, `LS_KD_PAIRS`). Citations of the reference repositories keep their
line numbers (their commits are pinned) and are skipped: they follow a
repository tag (`R `, `M `, `C `, `owner/name@commit `) or name paths this
repository does not have.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md"))

_PATH = r"(?P<path>[A-Za-z0-9_][A-Za-z0-9_./-]*\.py)"
# `path.py:12`, `path.py:12-20`, `path.py:12-20, 31, :40-41`.
LINE_CITATION = re.compile(
    _PATH + r":(?P<lines>\d+(?:-\d+)?(?:,\s*:?\d+(?:-\d+)?)*)(?![\d.])"
)
# `path.py: name` (possibly wrapped onto the next line).
NAME_CITATION = re.compile(_PATH + r":\s+`?(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
# A reference repository's tag right before the path: `R `, `M `, `C ` or
# `owner/name@commit `.
REFERENCE_TAG = re.compile(r"(?:(?<![\w/.@-])[A-Z]|@[0-9a-f]{7,40})\s+$")


def own_file(cited, text_before):
    """The file of this repository a citation names, or None."""
    if REFERENCE_TAG.search(text_before[-48:]):
        return None
    if cited.startswith(("/", "../")) or "{" in cited:
        return None
    for candidate in (ROOT / cited, ROOT / "keras_cskd" / cited):
        if candidate.is_file():
            return candidate
    return None


def citations(pattern, text):
    """`(line number in text, match, our file)` of each own-file citation."""
    found = []
    for match in pattern.finditer(text):
        start = match.start("path")
        if start > 0 and text[start - 1] in "/.":
            continue  # part of a longer path we did not match whole
        path = own_file(match["path"], text[:start])
        if path is not None:
            found.append((text.count("\n", 0, start) + 1, match, path))
    return found


def line_problems(text):
    """Each own-file line citation in `text`: cite a name instead."""
    return [
        f"{line}: `{match[0]}`: cite a name in {path.name}, not a line"
        for line, match, path in citations(LINE_CITATION, text)
    ]


def name_problems(text):
    """Each own-file name citation whose name is not in the file."""
    return [
        f"{line}: `{match[0]}`: not in {path.name}"
        for line, match, path in citations(NAME_CITATION, text)
        if not re.search(rf"\b{match['name']}\b", path.read_text(encoding="utf-8"))
    ]


def _problems(check):
    return [
        f"{doc.relative_to(ROOT)}:{problem}"
        for doc in DOCS
        for problem in check(doc.read_text(encoding="utf-8"))
    ]


def test_our_files_are_cited_by_name_not_by_line():
    problems = _problems(line_problems)
    assert not problems, "Line citations of our own files:\n" + "\n".join(problems)


def test_name_citations_of_our_files_name_something_in_them():
    problems = _problems(name_problems)
    assert not problems, "Names cited in files that lack them:\n" + "\n".join(problems)


def test_line_citations_and_missing_names_of_our_files_are_reported():
    text = (
        "`configs/cifar100_teacher.py:1-2, 5`\n"
        "R configs/cifar100_teacher.py:999\n"
        "`losses/kd.py: KD` and `losses/kd.py: NoSuchName`\n"
    )
    assert [p.split(":")[0] for p in line_problems(text)] == ["1"]
    assert [p.split(":")[0] for p in name_problems(text)] == ["3"]


@pytest.mark.parametrize(
    "text, cited",
    [
        ("see `configs/cifar100_distill.py:1-3`", True),
        ("see `keras_cskd/losses/mlkd.py:1`", True),
        ("R configs/cifar100_distill.py:12", False),
        ("llieeai/lud@2704bb2 configs/cifar100_distill.py:12", False),
        ("mdistiller/engine/cfg.py:41", False),
        ("`configs/cifar100_teacher.py:vgg13`", False),
    ],
)
def test_only_our_files_count_as_cited(text, cited):
    match = LINE_CITATION.search(text)
    found = bool(match) and own_file(match["path"], text[: match.start()]) is not None
    assert found == cited
