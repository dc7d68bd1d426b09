"""keras_cskd on JAX where TensorFlow is not installed.

Each test runs a fresh interpreter with `KERAS_BACKEND=jax` whose
`sys.modules` blocks `tensorflow` and `tensorflow_datasets` before anything
is imported, as if neither were installed (this process has imported
TensorFlow already, in conftest).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="needs JAX: pip install keras-cskd[jax]",
)

BLOCK_TENSORFLOW = """\
import sys

sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
"""


def run_without_tensorflow(script):
    """Runs `script` on JAX without TensorFlow; fails with its output."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK"), result.stdout + result.stderr


def test_models_losses_and_optimizers_work_without_tensorflow():
    run_without_tensorflow(
        """
        import keras
        import numpy as np

        import keras_cskd
        from keras_cskd import losses, models, optimizers
        from keras_cskd.batch_norm import TorchBatchNormalization

        assert keras.backend.backend() == "jax"
        rng = np.random.default_rng(0)

        model = models.get("digits_cnn", num_classes=10, input_shape=(8, 8, 1))
        logits = model(rng.random((4, 8, 8, 1), dtype="float32"), training=True)
        assert tuple(logits.shape) == (4, 10), logits.shape
        # The CIFAR zoo's BatchNorm (a CIFAR model takes ~15 s to build on JAX).
        batch_norm = TorchBatchNormalization()
        images = np.ones((2, 4, 4, 8)) + np.arange(2)[:, None, None, None]
        batch_norm(images.astype("float32"), training=True)
        moving_variance = np.asarray(batch_norm.moving_variance)
        np.testing.assert_allclose(moving_variance, 0.9 + 0.1 * 0.25 * 32 / 31)

        teacher = rng.normal(size=(16, 10)).astype("float32")
        student = rng.normal(size=(16, 10)).astype("float32")
        labels = rng.integers(0, 10, 16)
        logit_losses = [
            name
            for name in losses.names()
            if issubclass(losses.get_class(name), losses.LogitLoss)
        ]
        assert {"kd", "cskd", "dkd", "two_view_cskd"} <= set(logit_losses)
        for name in logit_losses:
            loss = losses.get(name)
            kwargs = {"epoch": 3.0} if loss.uses_epoch else {}
            if loss.num_views > 1:
                value = loss.compute_loss(
                    [teacher, teacher + 1], [student, student - 1], labels=labels
                )
            else:
                value = loss.compute_loss(teacher, student, labels=labels, **kwargs)
            assert np.isfinite(float(value)), (name, value)
        cswt = losses.CSKD(temperature=losses.CSWT()).compute_loss(teacher, student)
        assert np.isfinite(float(cswt))

        # One TorchSGD step: g += wd * w; b = g; w -= lr * b.
        weights = rng.normal(size=(3, 2)).astype("float32")
        gradient = rng.normal(size=(3, 2)).astype("float32")
        variable = keras.Variable(weights)
        optimizer = optimizers.TorchSGD(0.1, momentum=0.9, weight_decay=0.01)
        optimizer.apply_gradients([(gradient, variable)])
        expected = weights - 0.1 * (gradient + 0.01 * weights)
        np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-6)

        for subpackage in ("data", "export"):
            try:
                getattr(keras_cskd, subpackage)
            except ModuleNotFoundError as error:
                assert error.name == "tensorflow", error.name
                assert "tensorflow" in str(error).lower(), str(error)
            else:
                raise AssertionError(f"keras_cskd.{subpackage} imported")
        print("OK")
        """
    )


def test_distiller_trains_on_arrays_and_a_py_dataset_without_tensorflow():
    run_without_tensorflow(
        """
        import keras
        import numpy as np
        from sklearn.datasets import load_digits

        import keras_cskd

        digits = load_digits()
        images = (digits.images[:256, :, :, None] / 16.0).astype("float32")
        labels = digits.target[:256]
        teacher = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1))
        student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
        distiller = keras_cskd.Distiller(teacher, student, keras_cskd.losses.CSKD())
        distiller.compile(keras.optimizers.SGD(0.1))
        history = distiller.fit(images, labels, batch_size=32, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1]), history.history

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return 4

            def __getitem__(self, index):
                rows = slice(64 * index, 64 * (index + 1))
                return images[rows], labels[rows]

        history = distiller.fit(Batches(), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1]), history.history
        print("OK")
        """
    )
