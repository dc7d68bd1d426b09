"""A loss names its inputs by layer, by feature tap (`"feats[1:]"`) or by a
list of layers, and the Distiller gives it those outputs."""

import keras
import numpy as np
import pytest

import keras_cskd
from keras_cskd.losses import NST, PKT, DistillationLoss
from keras_cskd.models import taps


def zoo(name="resnet8"):
    return keras_cskd.models.get(name, 10, (16, 16, 3))


class Recorder(DistillationLoss):
    """Keeps the shapes of what the Distiller passes and the shapes `build`
    got; its value is 0."""

    def __init__(self, teacher_layer_name, student_layer_name):
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name

    def build(self, teacher_shape, student_shape):
        self.built_shapes = teacher_shape, student_shape

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        self.seen = keras.tree.map_structure(
            lambda t: tuple(t.shape), (teacher_outputs, student_outputs)
        )
        return keras.ops.zeros(())


def test_a_tap_spec_resolves_to_the_features_outputs():
    model = zoo()
    outputs = taps.tap_outputs(model)
    assert taps.tap(model, "feats[1:]") == outputs["feats"][1:]
    assert taps.tap(model, "feats[-1]") is outputs["feats"][-1]
    assert taps.tap(model, "preact_feats[1:-1]") == outputs["preact_feats"][1:-1]
    assert taps.tap(model, "pooled_feat") is outputs["pooled_feat"]


@pytest.mark.parametrize("spec", ["feats[9]", "feats", "feat[1]", "feats[a:]"])
def test_a_bad_tap_spec_is_refused_in_one_line(spec):
    with pytest.raises(ValueError) as error:
        taps.tap(zoo(), spec)
    assert "\n" not in str(error.value) and spec in str(error.value)


def test_the_distiller_passes_lists_for_slices_and_lists_of_layers():
    teacher, student = zoo("resnet14"), zoo()
    loss = Recorder("feats[1:]", ["stem_relu"])
    distiller = keras_cskd.Distiller(teacher, student, loss)
    images = np.zeros((4, 16, 16, 3), "float32")
    distiller.compile(optimizer="sgd")
    distiller.train_on_batch(images, np.arange(4))
    stages = [(16, 16, 16), (8, 8, 32), (4, 4, 64)]
    assert loss.built_shapes == (
        [(None, *shape) for shape in stages],
        [(None, 16, 16, 16)],
    )
    assert loss.seen == ([(4, *shape) for shape in stages], [(4, 16, 16, 16)])


def test_an_unknown_tap_or_layer_is_refused_naming_the_loss():
    with pytest.raises(ValueError, match="Recorder, in the student: 'feats\\[7\\]'"):
        keras_cskd.Distiller(zoo(), zoo(), Recorder("feats[1]", "feats[7]"))
    with pytest.raises(ValueError, match="the teacher has no layer 'nope'"):
        keras_cskd.Distiller(zoo(), zoo(), Recorder(["nope"], "feats[1]"))


def test_multi_stage_losses_train_on_zoo_taps():
    """NST over every stage and PKT on the pooled features: the values the
    losses give on the taps' tensors directly."""
    teacher, student = zoo("resnet14"), zoo()
    losses = [NST("feats[1:]", "feats[1:]"), PKT("pooled_feat", "pooled_feat")]
    distiller = keras_cskd.Distiller(
        teacher, student, losses, distillation_loss_weight=[1.0, 1.0]
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    images = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    logs = distiller.train_on_batch(images, np.arange(8), return_dict=True)
    teacher_taps = keras_cskd.models.features(teacher)(images, training=False)
    student_taps = keras_cskd.models.features(student)(images, training=True)
    expected_nst = losses[0].compute_loss(
        teacher_taps["feats"][1:], student_taps["feats"][1:]
    )
    expected_pkt = losses[1].compute_loss(
        teacher_taps["pooled_feat"], student_taps["pooled_feat"]
    )
    np.testing.assert_allclose(logs["nst_loss"], expected_nst, rtol=1e-5)
    np.testing.assert_allclose(logs["pkt_loss"], expected_pkt, rtol=1e-5, atol=1e-8)
