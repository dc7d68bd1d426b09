"""The documentation site builds with `mkdocs build --strict`.

Strict mode turns every broken link, missing anchor, page left out of the nav
and unresolvable API reference into an error, so this is the check that the
site (mkdocs.yml, docs/) and the docstrings it renders still agree.
"""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _docs_tools_missing():
    needed = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    return [name for name in needed if _find(name) is None]


def _find(name):
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


def test_site_builds_strictly(tmp_path):
    missing = _docs_tools_missing()
    if missing:
        pytest.skip(f'{", ".join(missing)} not installed: pip install -e ".[docs]"')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["--site-dir", str(tmp_path / "site")],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "losses" / "index.html").exists()
