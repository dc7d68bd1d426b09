"""Doctest setup: every `>>>` example in keras_cskd/ runs with the tests.

`python -m pytest` collects `keras_cskd` with `--doctest-modules` (pyproject's
`[tool.pytest.ini_options]`). An example runs in a fresh temporary directory
with `np`, `keras`, `tf` and `keras_cskd` already imported; one that needs an
optional package that is not installed is skipped with its pip line, as is a
module that imports one (docs/extending.md, "Docstring examples").
"""

import doctest
import importlib.util
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = Path(__file__).parent
_TESTS = _ROOT / "tests"

# Optional packages a module or an example may import, with their pip lines.
_OPTIONAL = {
    "jax": 'pip install "keras-cskd[jax]"',
    "torch": 'pip install "keras-cskd[torch]"',
    "onnx": 'pip install "keras-cskd[onnx]"',
    "onnxruntime": 'pip install "keras-cskd[onnx]"',
    "tf2onnx": 'pip install "keras-cskd[onnx]"',
    "matplotlib": 'pip install "keras-cskd[bench]"',
    "PIL": "pip install pillow",
}
# `# doctest: +LARGE` on an example (one that builds a full-size model, say)
# puts its docstring in the large tier (`-m large`), out of the fast one.
LARGE = doctest.register_optionflag("LARGE")
_IMPORT = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.MULTILINE)
_NOT_FOUND = re.compile(r"No module named '(\w+)")


def _missing(package):
    return package in _OPTIONAL and importlib.util.find_spec(package) is None


def _skip_reason(package):
    return f"needs {package}: {_OPTIONAL[package]}"


def pytest_ignore_collect(collection_path, config):
    """Reads only test modules in tests/ (`--doctest-modules` would import all).

    The other files there are scripts the tests run in subprocesses and
    golden-fixture makers that import torch and the reference code.
    """
    if collection_path.suffix != ".py" or _TESTS not in collection_path.parents:
        return None
    name = collection_path.name
    return not (name.startswith("test_") or name == "conftest.py") or None


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module that imports a missing optional package is skipped, not failed."""
    report = yield
    if report.failed and _ROOT / "keras_cskd" in Path(collector.path).parents:
        found = _NOT_FOUND.search(str(report.longrepr))
        if found and found.group(1) in _OPTIONAL:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), None, _skip_reason(found[1]))
    return report


def pytest_collection_modifyitems(items):
    """Marks `+LARGE` examples large; skips those needing a missing package."""
    for item in items:
        if not _is_doctest(item):
            continue
        if any(example.options.get(LARGE) for example in item.dtest.examples):
            item.add_marker(pytest.mark.large)
        source = "".join(example.source for example in item.dtest.examples)
        for package in _IMPORT.findall(source):
            if _missing(package):
                item.add_marker(pytest.mark.skip(reason=_skip_reason(package)))
                break


def _is_doctest(item):
    return hasattr(item, "dtest")


@pytest.fixture(autouse=True)
def _doctest_setup(request):
    """Gives each example the common imports, its own working directory and
    the environment restored after it."""
    if not _is_doctest(request.node):
        yield
        return
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_cskd

    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(np=np, keras=keras, tf=tf, keras_cskd=keras_cskd)
    directory, environment = os.getcwd(), dict(os.environ)
    os.chdir(request.getfixturevalue("tmp_path"))
    yield
    os.chdir(directory)
    os.environ.clear()  # an example may set TF_CONFIG, as a launcher does
    os.environ.update(environment)
