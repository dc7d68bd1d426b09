"""The `crd` recipe end to end, resumed bitwise (its memory banks, Z and
draw count in the checkpoint), and CRD under MirroredStrategy."""

import pytest
from recipe_run import assert_resumes_bitwise


@pytest.mark.large
def test_the_crd_recipe_runs_and_resumes_bitwise(tmp_path, monkeypatch):
    """Killed after its first step: the second step reads the banks, Z and
    the draw count the first one left, so only a checkpoint holding them
    resumes to the same student."""
    summary = assert_resumes_bitwise("crd", tmp_path, monkeypatch)
    assert summary["method"] == "crd"
