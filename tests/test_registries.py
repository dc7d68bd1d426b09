"""One registry style: losses, models and datasets register with a decorator,
and a loss declares what it needs (a CSWT, sample indices) instead of lists."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_cskd
from keras_cskd import builders, data, distribute, losses, models
from keras_cskd.config import default_config, loss_config, validate
from keras_cskd.data import Dataset
from keras_cskd.losses.distillation_loss import DistillationLoss, as_distillation_loss

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- toys, registered
# here, outside the package, once per test process.


@losses.register("registry_toy_indices")
class MaxSampleIndex(DistillationLoss):
    """The largest of the batch's sample indices (plus 0 x the logits): not
    a mean, so a replica's shard alone gives another value."""

    uses_sample_indices = True

    def __init__(self, global_batch=True):
        self.global_batch = global_batch

    def compute_loss(self, teacher_logits, student_logits, sample_indices, **kwargs):
        self.seen_dtype = sample_indices.dtype
        unused = 0.0 * ops.mean(teacher_logits - student_logits)
        return ops.max(ops.cast(sample_indices, "float32")) + unused


@losses.register("Registry_Toy_Temperature")
class ToyTemperatureLoss(losses.LogitLoss):
    """A LogitLoss (its temperature may be a CSWT): the mean scaled gap."""

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        temperature, _ = self.temperatures(teacher_logits, student_logits)
        return ops.mean(ops.abs(teacher_logits - student_logits) / temperature)


@data.register("registry_toy_family:<size>")
def load_toy_family(size, seed=0):
    """`registry_toy_family:<size>`: `size` random 2x2 images, 2 classes."""
    images = np.random.default_rng(seed).random((int(size), 2, 2, 1), "float32")
    labels = np.arange(int(size), dtype="int32") % 2
    split = tf.data.Dataset.from_tensor_slices((images, labels))
    return Dataset(f"registry_toy_family:{size}", split, None, split, 2, (2, 2, 1))


@data.register("registry_toy_plain")
def load_toy_plain(**options):
    """A loader naming none of the shared options: it gets the source's own."""
    load_toy_plain.options = options
    return load_toy_family("4")


# ------------------------------------------------------------------- losses


def test_every_package_loss_is_registered_by_its_module():
    assert {"kd", "cskd", "skd", "lskd", "dkd", "dist", "two_view_cskd"} <= set(
        losses.names()
    )
    assert losses.get_class("KD") is losses.KD  # case-insensitive, as before
    assert type(losses.get("Registry_toy_temperature")) is ToyTemperatureLoss


def test_a_loss_name_registered_twice_is_refused():
    with pytest.raises(ValueError, match="named 'kd' is already registered"):
        losses.register("KD")(ToyTemperatureLoss)


def test_every_loss_declares_how_it_takes_a_cswt():
    expected = {
        "kd": "temperature",
        "skd": "temperature",
        "lskd": "temperature",
        "dkd": "temperature",
        "dist": "temperature",
        "cskd": "cswt",
        "two_view_cskd": "cswt",
        "feature_distillation": None,
        "attention_transfer": None,
    }
    for name, argument in expected.items():
        assert losses.get_class(name).cswt_argument == argument, name


@pytest.mark.parametrize(
    "method, cswt, expected",
    [
        ("kd", True, "KD(temperature=CSWT(t_min=1.0, t_max=5.0)"),
        ("kd", False, "KD(temperature=4.0"),
        ("cskd", True, "cswt=CSWT(t_min=1.0, t_max=5.0)"),
        ("cskd", False, "cswt=None"),
        ("registry_toy_temperature", True, "temperature=CSWT(t_min=1.0, t_max=5.0)"),
    ],
)
def test_build_loss_puts_the_cswt_where_the_loss_declares(method, cswt, expected):
    loss = builders.build_loss(loss_config(method, cswt=cswt, t_min=1.0, t_max=5.0))
    assert expected in repr(loss)


def test_a_cswt_for_a_loss_that_takes_none_is_refused_in_one_line():
    config = default_config()
    config.loss = loss_config(
        "registry_toy_indices", cswt=True, global_batch=True
    )  # a DistillationLoss without cswt_argument
    with pytest.raises(ValueError, match="registry_toy_indices loss takes no CSWT"):
        builders.build_loss(config.loss)
    with pytest.raises(ValueError, match="loss.cswt=False") as error:
        validate(config)
    assert "\n" not in str(error.value)


def test_the_old_base_class_name_is_refused_with_the_new_one():
    with pytest.raises(AttributeError, match="keras_cskd.losses.LogitLoss"):
        losses.LogitsDistillationLoss  # noqa: B018
    assert issubclass(losses.KD, losses.LogitLoss)


def test_the_serialized_names_of_the_losses_did_not_change():
    # A saved Distiller names its loss by these: the rename of the base class
    # (never registered) leaves every saved file loadable.
    config = keras.saving.serialize_keras_object(losses.KD(temperature=3.0))
    assert config["registered_name"] == "keras_cskd>KD"
    assert keras.saving.deserialize_keras_object(config).temperature == 3.0


def test_as_distillation_loss_adapts_keras_losses_and_keeps_ours():
    ours = losses.KD()
    assert as_distillation_loss(ours) is ours
    adapted = as_distillation_loss(keras.distillation.LogitsDistillation())
    assert isinstance(adapted, DistillationLoss)
    assert (adapted.uses_epoch, adapted.uses_sample_indices) == (False, False)
    assert adapted.cswt_argument is None


# ------------------------------------------------------- sample indices


def tiny_pair(num_classes=3):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(num_classes)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(num_classes)])
    return teacher, student


def indexed_batch(size=8, cached_logits=False):
    rng = np.random.default_rng(0)
    inputs = {
        "images": rng.normal(size=(size, 4)).astype("float32"),
        "sample_indices": np.arange(100, 100 + size, dtype="int64"),
    }
    if cached_logits:
        inputs["teacher_logits"] = rng.normal(size=(size, 3)).astype("float32")
    return inputs, rng.integers(0, 3, size).astype("int32")


@pytest.mark.parametrize("cached_logits", [False, True])
def test_a_loss_using_sample_indices_gets_them_from_the_batch(cached_logits):
    loss = MaxSampleIndex()
    distiller = keras_cskd.Distiller(*tiny_pair(), loss)
    distiller.compile(optimizer="sgd")
    inputs, labels = indexed_batch(cached_logits=cached_logits)
    logs = distiller.train_on_batch(inputs, labels, return_dict=True)
    assert logs["distillation_loss"] == 107.0  # the largest of 100..107
    assert keras.backend.standardize_dtype(loss.seen_dtype) == "int32"


def test_a_batch_without_sample_indices_is_refused_in_one_line():
    distiller = keras_cskd.Distiller(*tiny_pair(), MaxSampleIndex())
    distiller.compile(optimizer="sgd")
    inputs, labels = indexed_batch()
    with pytest.raises(ValueError, match="MaxSampleIndex needs each example's") as e:
        distiller.train_on_batch(inputs["images"], labels)
    assert "\n" not in str(e.value) and "sample_indices" in str(e.value)


def test_losses_without_the_declaration_get_no_sample_indices():
    # KD takes no `sample_indices=` argument: it must not be passed one.
    distiller = keras_cskd.Distiller(*tiny_pair(), losses.KD())
    distiller.compile(optimizer="sgd")
    inputs, labels = indexed_batch()
    logs = distiller.train_on_batch(inputs, labels, return_dict=True)
    assert np.isfinite(logs["distillation_loss"])


@pytest.mark.large
@pytest.mark.parametrize("global_batch", [True, False])
def test_sample_indices_are_gathered_across_replicas(global_batch):
    """Rows 100..107 on one replica, 108..115 on the other: the global batch's
    largest index is 115; each shard's (107, 115), averaged, 111."""
    strategy = distribute.get_strategy("mirrored")  # the two logical CPUs
    with strategy.scope():
        distiller = keras_cskd.Distiller(*tiny_pair(), MaxSampleIndex(global_batch))
        distiller.compile(optimizer="sgd")
    inputs, labels = indexed_batch(size=16)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16)
    history = distiller.fit(dataset, epochs=1, verbose=0)
    expected = 115.0 if global_batch else 111.0
    assert history.history["distillation_loss"][-1] == pytest.approx(expected)


# ------------------------------------------------------------------ models


def test_models_keep_their_registry_api_and_error():
    assert "digits_mlp" in models.names()
    with pytest.raises(ValueError, match="named 'digits_mlp' is already registered"):
        models.register("digits_mlp")(lambda **kwargs: None)
    with pytest.raises(
        ValueError,
        match=r"Unknown model 'digits_mpl'\. Did you mean 'digits_mlp'.*"
        r"or 'keras.applications:<Name>'",
    ):
        models.get("digits_mpl", 10, (8, 8, 1))


# ---------------------------------------------------------------- datasets


def test_a_family_loader_gets_its_argument_and_the_options_it_names():
    dataset = data.load("registry_toy_family:6", seed=3, data_dir="/nowhere")
    assert dataset.name == "registry_toy_family:6"
    assert len(list(dataset.train)) == 6
    assert "registry_toy_family:<size>" in data.names()


def test_a_loader_gets_only_the_shared_options_it_names():
    data.load("registry_toy_plain", data_dir="/x", download=True, seed=4, size=2)
    assert load_toy_plain.options == {"size": 2}


def test_a_validation_fraction_for_a_loader_without_one_is_refused():
    with pytest.raises(ValueError, match="registry_toy_plain dataset takes no val"):
        data.load("registry_toy_plain", validation_fraction=0.2)


def test_a_family_without_its_argument_and_a_shadowing_name_are_refused():
    with pytest.raises(ValueError, match="needs its argument: 'tfds:<name>'"):
        data.load("tfds")
    with pytest.raises(ValueError, match="'tfds:<name>' is already registered"):
        data.register("tfds")(load_toy_plain)


# ------------------------------------------------------------ train.py --list


@pytest.mark.large
def test_train_py_list_shows_every_registry_and_what_a_config_registers(tmp_path):
    (tmp_path / "my_toys.py").write_text(
        "import keras_cskd\n\n"
        "@keras_cskd.models.register('listed_toy_model')\n"
        "def build(num_classes, input_shape):\n"
        "    raise NotImplementedError\n"
    )
    config = tmp_path / "toy_config.py"
    config.write_text(
        "import my_toys  # noqa: F401\n"
        "from keras_cskd.config import default_config\n\n"
        "def get_config():\n"
        "    return default_config()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    result = subprocess.run(
        [sys.executable, "train.py", f"--config={config}", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    assert {"losses", "models", "datasets", "augmentations", "configs"} <= set(lines)
    assert "cifar_crop_flip" in lines["augmentations"]
    assert "cifar_randaugment" in lines["strong views"]
    assert "scratch" in lines["losses"] and "cskd" in lines["losses"]
    assert "digits_mlp" in lines["models"] and "listed_toy_model" in lines["models"]
    assert "digits" in lines["datasets"] and "tfds:<name>" in lines["datasets"]
    assert "digits_cskd" in lines["configs"]


@pytest.mark.parametrize(
    "module, old, new",
    [
        ("keras_cskd.data", "ImageRecords", "StreamedSource"),
        ("keras_cskd.callbacks", "accuracy", "evaluate_accuracy"),
    ],
)
def test_other_renamed_public_names_are_refused_naming_the_new_one(module, old, new):
    with pytest.raises(AttributeError, match=new):
        getattr(importlib.import_module(module), old)
