"""The CIFAR zoo: parameter counts of the reference PyTorch models, logits, a step."""

import keras
import numpy as np
import pytest

import keras_cskd.models

pytestmark = pytest.mark.large  # multi-process, end-to-end or every zoo model

# name: (trainable, BatchNorm moving mean + variance) of the reference PyTorch
# models (RepDistiller / mdistiller) at 100 classes and 32x32x3 inputs.
REFERENCE_COUNTS = {
    "resnet8": (83892, 672),
    "resnet14": (181108, 1120),
    "resnet20": (278324, 1568),
    "resnet32": (472756, 2464),
    "resnet44": (667188, 3360),
    "resnet56": (861620, 4256),
    "resnet110": (1736564, 8288),
    "resnet8x4": (1233540, 2752),
    "resnet32x4": (7433860, 9920),
    "wrn_16_1": (180916, 928),
    "wrn_16_2": (703284, 1824),
    "wrn_40_1": (569780, 2720),
    "wrn_40_2": (2255156, 5408),
    "vgg8": (3965028, 2944),
    "vgg11": (9277284, 5504),
    "vgg13": (9462180, 5888),
    "vgg16": (14774436, 8448),
    "vgg19": (20086692, 11008),
    "mobilenetv2": (812836, 18368),
    "shufflenetv1": (949258, 23736),
    "shufflenetv2": (1355528, 16180),
    "resnet50": (23705252, 53120),
    "resnet18": (11220132, 9600),
}


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_zoo_is_registered():
    assert set(REFERENCE_COUNTS) <= set(keras_cskd.models.names())


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_zoo_model(name):
    keras.utils.set_random_seed(0)
    model = keras_cskd.models.get(name, num_classes=100, input_shape=(32, 32, 3))
    trainable, bn_statistics = REFERENCE_COUNTS[name]
    assert _count(model.trainable_weights) == trainable
    assert _count(model.non_trainable_weights) == bn_statistics

    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    logits = model(images, training=False)
    assert tuple(logits.shape) == (2, 100)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))

    # One eager training step: cheaper than tracing the graph for a single step.
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    kernel = model.trainable_weights[0]
    before = kernel.numpy().copy()
    loss = model.train_on_batch(images, np.array([3, 7]))
    assert np.isfinite(loss)
    assert not np.allclose(before, kernel.numpy())


@pytest.mark.parametrize(
    "name",
    ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"],
)
def test_batch_norm_group(name):
    model = keras_cskd.models.get(
        name, num_classes=10, input_shape=(32, 32, 3), batch_norm_group=64
    )
    bns = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and all(bn.group_size == 64 for bn in bns)
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
