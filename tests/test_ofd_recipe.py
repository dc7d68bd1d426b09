"""The `ofd` recipe's pairs and the modules it builds on them
(tests/test_feature_recipes.py runs it and resumes it)."""

import pytest


def _distill_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "cifar100_distill.py"
    spec = importlib.util.spec_from_file_location("cifar100_distill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# One pair per teacher family and per kind of student (ShuffleNet's stages are
# half the teacher's size: the teacher is pooled); the others repeat them.
PAIRS_TO_BUILD = (
    ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "shufflenetv1"),
    ("vgg13", "vgg8"),
)


@pytest.mark.large
def test_ofd_builds_on_its_recipes_pairs():
    import keras_cskd
    from keras_cskd.builders import build_loss

    distill = _distill_module()
    assert ("vgg13", "mobilenetv2") not in distill.pairs("ofd")
    with pytest.raises(ValueError, match="no recipe for vgg13,mobilenetv2"):
        distill.get_config("ofd,vgg13,mobilenetv2")
    assert set(PAIRS_TO_BUILD) <= set(distill.pairs("ofd"))
    for teacher_name, student_name in PAIRS_TO_BUILD:
        config = distill.get_config(f"ofd,{teacher_name},{student_name}")
        teacher = keras_cskd.models.get(teacher_name, 100, (32, 32, 3))
        student = keras_cskd.models.get(student_name, 100, (32, 32, 3))
        loss = build_loss(config.loss)
        keras_cskd.Distiller(teacher, student, loss)
        channels = [len(m) for m in loss.margins]
        assert channels == [c.kernel.shape[-1] for c, _ in loss._connectors]
        assert loss.extra_parameters > 0
