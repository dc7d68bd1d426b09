"""The `ofd` recipe end to end: a few steps on mock CIFAR data, and a resume
after a kill that ends bitwise as the uninterrupted run (tests/recipe_run.py)."""

import pytest
from recipe_run import assert_resumes_bitwise


@pytest.mark.large
def test_ofd_recipe_trains_and_resumes_bitwise(tmp_path, monkeypatch):
    summary = assert_resumes_bitwise("ofd", tmp_path, monkeypatch)
    assert summary["last_epoch"] == 1
