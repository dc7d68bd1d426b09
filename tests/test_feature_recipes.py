"""The feature methods' CIFAR-100 recipes run end to end and resume bitwise.

Each method of METHODS: `configs/cifar100_distill.py:<method>,resnet32x4,
resnet8x4` on mock CIFAR data with small zoo models (tests/recipe_run.py), one
run killed after a checkpoint and resumed, against one run straight through.
"""

import pytest
from recipe_run import assert_resumes_bitwise

pytestmark = pytest.mark.large  # end to end

METHODS = ("nst", "pkt", "kdsvd", "rkd", "sp")


@pytest.mark.parametrize("method", METHODS)
def test_recipe_runs_and_resumes_bitwise(method, tmp_path, monkeypatch):
    assert_resumes_bitwise(method, tmp_path, monkeypatch, teacher="resnet8")
