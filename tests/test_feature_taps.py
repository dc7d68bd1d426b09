"""`keras_cskd.models.features`: the taps of a user's model and of the zoo.

The zoo's taps are compared with the reference models' in
`test_cifar_porting.py` (all 23 CIFAR models) and `test_imagenet_zoo.py`.
"""

import keras
import numpy as np
import pytest

import keras_cskd.models


def _named_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="preact_feats_0")(x)
    x = keras.layers.ReLU(name="feats_0")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="feats_1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pooled_feat")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x), name="mine")


def test_a_users_model_names_its_tap_layers():
    model = _named_model()
    taps = keras_cskd.models.features(model)
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    outputs = taps(images)
    assert sorted(outputs) == ["feats", "logits", "pooled_feat", "preact_feats"]
    assert [tuple(t.shape) for t in outputs["feats"]] == [(2, 8, 8, 4), (2, 4, 4, 6)]
    assert len(outputs["preact_feats"]) == 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["logits"]),
        keras.ops.convert_to_numpy(model(images)),
        atol=1e-6,
    )
    # The taps share the model's weights.
    assert {id(w) for w in taps.weights} == {id(w) for w in model.weights}


def test_a_model_without_taps_is_refused_in_one_line():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="plain")
    with pytest.raises(ValueError, match="name its layers feats_0") as error:
        keras_cskd.models.features(model)
    assert "\n" not in str(error.value)


def test_a_zoo_name_on_other_layers_is_refused_in_one_line():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="resnet8")
    with pytest.raises(ValueError, match="No feature taps for model 'resnet8'"):
        keras_cskd.models.features(model)


def test_digits_cnn_taps_each_block():
    model = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1))
    shapes = keras_cskd.models.features(model).output
    assert [tuple(t.shape) for t in shapes["feats"]] == [
        (None, 8, 8, 32),
        (None, 4, 4, 64),
        (None, 2, 2, 128),
    ]
    assert tuple(shapes["pooled_feat"].shape) == (None, 128)
