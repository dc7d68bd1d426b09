"""A griffe extension that shows docstring doctests as code on the site.

A `>>>` example that is not indented under its `Example:` line is plain text
to the Google-style parser, so Markdown would read `x[0][:2]` in it as a
link (a broken reference under `mkdocs build --strict`). This wraps each run
of such lines, from a `>>>` line to the next blank line, in a `pycon` fence.
Docstrings themselves stay as `pytest --doctest-modules` reads them.
"""

import griffe


def fence_doctests(text):
    """`text` with every unindented doctest run inside a ```pycon fence.

    Example:

    >>> fence_doctests(">>> 1 + 1\\n2\\n\\ntext").splitlines()
    ['```pycon', '>>> 1 + 1', '2', '```', '', 'text']
    """
    lines, fenced, in_doctest, in_fence = text.splitlines(), [], False, False
    for line in lines:
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and not in_doctest and line.startswith(">>>"):
            fenced.append("```pycon")
            in_doctest = True
        elif in_doctest and not line.strip():
            fenced.append("```")
            in_doctest = False
        fenced.append(line)
    if in_doctest:
        fenced.append("```")
    return "\n".join(fenced)


class DoctestFences(griffe.Extension):
    """Fences the doctests of every docstring griffe loads."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
