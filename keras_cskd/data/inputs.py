"""A run's inputs: what the data config makes of a dataset, in one object.

`load_inputs(data_config, seed, strategy)` loads and checks the named dataset
and returns an `ArrayInputs` (splits held in memory as `tf.data` examples) or a
`StreamedInputs` (encoded images decoded as training goes, ImageNet-scale).
Both have the same methods, so the run that asks them never asks which kind
of data it has:

- `train_batches(first_epoch, epochs, skip_steps, teacher)`: the training
  batches of an epoch range, resumable at a step, under the strategy, with the
  teacher's cached logits, two views or mixup as the config says;
- `steps_per_epoch`, `validation`, `test` (batched `(images, labels)`
  pipelines, or `None` for a missing validation split), `first_test_images`;
- `export_sample()`: the export's calibration data and test arrays;
- `train_labels()`: the training split's labels in example order (the
  order of `data.sample_indices`' indices), for a loss that keeps a row per
  example (CRD);
- `name`, `num_classes`, `input_shape`, `normalization` and `dataset`.

What a kind does not support is refused when it is made, before a run writes
anything.

Example:

```python
inputs = load_inputs(config.data, seed=0, strategy=strategy)
trainer.fit(inputs.train_batches(0, 30), epochs=30,
            steps_per_epoch=inputs.steps_per_epoch,
            validation_data=inputs.validation)
```
"""

import math

from keras_cskd.data import augment, registry, streaming, teacher_cache
from keras_cskd.data.dataset_checks import check_dataset
from keras_cskd.data.decoded import (
    labels_of,
    pipeline,
    to_numpy,
    with_sample_indices,
    with_teacher_logits,
)
from keras_cskd.data.streamed_source import StreamedSource

# A streamed dataset's exports are measured on this many test images, and its
# int8 export calibrated on this many training images (class-balanced).
EXPORT_SAMPLE = 1000


def load_inputs(data_config, seed=0, strategy=None):
    """Loads the dataset `data_config` names and wraps it for a run.

    Args:
        data_config: the config's `data` block (`keras_cskd.config`).
        seed: the run's seed: shuffles, augmentations, a folder's carve.
        strategy: the `tf.distribute` strategy the batches are for, or `None`.

    Returns:
        A `StreamedInputs` for a dataset of encoded images (ImageNet-scale),
        else an `ArrayInputs`.

    Raises:
        ValueError: for an unknown augmentation name, or options the kind of
            data does not support (the message names the fix).
    """
    dataset = registry.load(
        data_config.name,
        data_dir=data_config.data_dir or None,
        download=data_config.download,
        validation_fraction=data_config.validation_fraction,
        seed=seed,
        **_load_options(data_config),
    )
    check_dataset(dataset)
    streamed = isinstance(dataset.train, StreamedSource)
    kind = StreamedInputs if streamed else ArrayInputs
    return kind(data_config, dataset, seed, strategy)


def _load_options(data_config):
    """The loader options a config sets (the digits loader takes none)."""
    options = {"manual_dir": data_config.manual_dir} if data_config.manual_dir else {}
    if data_config.image_size:
        options["image_size"] = data_config.image_size
    return {**options, "streaming": True} if data_config.streaming else options


class Inputs:
    """What both kinds share: the dataset's description and the test split."""

    def __init__(self, data_config, dataset, seed=0, strategy=None):
        self.config, self.dataset, self.seed = data_config, dataset, seed
        self.strategy = strategy
        augment.AUGMENTATIONS.get(data_config.augmentation)  # a known name
        augment.STRONG_AUGMENTATIONS.get(data_config.strong_augmentation)
        self.check()
        self.test = self.split(dataset.test)

    name = property(lambda self: self.dataset.name)
    num_classes = property(lambda self: self.dataset.num_classes)
    input_shape = property(lambda self: self.dataset.input_shape)
    normalization = property(lambda self: self.dataset.normalization)

    @property
    def validation(self):
        """The validation split as batches of `(images, labels)`, or `None`."""
        if not self.dataset.validation:  # None (a tf.data.Dataset is truthy)
            return None
        return self.split(self.dataset.validation)

    def first_test_images(self, count=64):
        """Up to `count` test images (one batch at most), to look at a model's
        outputs."""
        return next(iter(self.test))[0][:count]

    def check(self):
        """Refuses what this kind of data does not support."""

    def split(self, examples):
        """`examples` as batches of `(images, labels)` for evaluation."""
        raise NotImplementedError

    def train_labels(self):
        """The training split's labels, `[N]`, in the order the batches'
        `sample_indices` count (`data.sample_indices`)."""
        return labels_of(self.dataset.train)


class ArrayInputs(Inputs):
    """Splits of decoded images (`tf.data` examples): digits, CIFAR, folders.

    Training batches are shuffled and augmented per batch from (seed, epoch,
    step) alone (`keras_cskd.data.pipeline`), optionally with the teacher's
    logits (computed once, or read from the cache of every augmented
    variant, `keras_cskd.data.teacher_cache`), a strong second view or mixup.
    """

    @property
    def steps_per_epoch(self):
        examples = int(self.dataset.train.cardinality())
        return math.ceil(examples / self.config.batch_size)

    def check(self):
        if self.config.augmentation == "imagenet_rrc":
            augment.get_augmentation("imagenet_rrc", self.dataset)  # refuses
        if self.config.sample_indices and self.config.cache_teacher_logits:
            raise ValueError(
                "data.sample_indices cannot be combined with "
                "data.cache_teacher_logits: turn the cache off."
            )

    def split(self, examples):
        return pipeline(examples, self.config.eval_batch_size)

    def train_batches(self, first_epoch, epochs, skip_steps=0, teacher=None):
        """The batches of epochs `first_epoch` to `epochs` (exclusive), the
        first `skip_steps` of the first epoch left out (a resumed run's).

        `teacher` (a `(path, model)` pair) adds the teacher's logits when the
        config caches them (`data.cache_teacher_logits`).
        """
        config = self.config
        augmentation = augment.get_augmentation(config.augmentation, self.dataset)
        examples, cached = self.dataset.train, teacher and config.cache_teacher_logits
        if cached and augmentation is not None:  # every crop/flip variant, cached
            return self._cached_batches(
                teacher, augmentation, first_epoch, epochs, skip_steps
            )
        if cached:
            examples = with_teacher_logits(examples, teacher[1])
        if config.sample_indices:  # indexed before any shuffle
            examples = with_sample_indices(examples)
        strong = None
        if config.two_views:
            strong = augment.get_strong_augmentation(
                config.strong_augmentation, self.dataset, self.seed
            )
        return pipeline(
            examples,
            config.batch_size,
            training=True,
            seed=self.seed,
            augmentation=augmentation,
            strong_augmentation=strong,
            mixup_alpha=config.mixup_alpha,
            num_classes=self.num_classes,
            epochs=epochs,
            first_epoch=first_epoch,
            skip_steps=skip_steps,
        )

    def _cached_batches(self, teacher, augmentation, first_epoch, epochs, skip_steps):
        path, model = teacher
        logits = teacher_cache.ensure(
            path, model, self.dataset, augmentation, dtype=self.config.cache_dtype
        )
        return teacher_cache.pipeline(
            self.dataset.train,
            logits,
            self.config.batch_size,
            augmentation,
            seed=self.seed,
            epochs=epochs,
            first_epoch=first_epoch,
            skip_steps=skip_steps,
        )

    def export_sample(self):
        """`(calibration, (images, labels))`: the training split calibrates an
        int8 export, the whole test split measures every export."""
        return self.dataset.train, to_numpy(self.dataset.test)


class StreamedInputs(Inputs):
    """Splits of encoded images (`StreamedSource`) decoded as needed.

    Training is RandomResizedCrop and flip (`data.augmentation="imagenet_rrc"`)
    drawn as each image is decoded; each input pipeline of a strategy decodes
    its replicas' rows only. Two views, mixup and the teacher-logit cache are
    refused.
    """

    @property
    def steps_per_epoch(self):
        return streaming.steps_per_epoch(self.dataset.train, self.config.batch_size)

    def check(self):
        config = self.config
        for unsupported in (
            "two_views",
            "mixup_alpha",
            "cache_teacher_logits",
            "sample_indices",
        ):
            if config[unsupported]:
                raise ValueError(
                    f"data.{unsupported} is not supported for the streamed dataset "
                    f"{config.name}: its training view is RandomResizedCrop and flip."
                )
        if config.augmentation != "imagenet_rrc":
            raise ValueError(
                f"{config.name} is streamed and trains on RandomResizedCrop and "
                "flip: set data.augmentation='imagenet_rrc' (it is "
                f"{config.augmentation!r})."
            )

    def split(self, records):
        return streaming.eval_pipeline(
            records, self.config.eval_batch_size, normalization=self.normalization
        )

    def train_batches(self, first_epoch, epochs, skip_steps=0, teacher=None):
        """As `ArrayInputs.train_batches`; the teacher runs on every batch."""
        return self.strategy.distribute_datasets_from_function(
            lambda context: streaming.train_pipeline(
                self.dataset.train,
                self.config.batch_size,
                seed=self.seed,
                epochs=epochs,
                first_epoch=first_epoch,
                skip_steps=skip_steps,
                normalization=self.normalization,
                input_context=context,
            )
        )

    def export_sample(self):
        """`(calibration, (images, labels))`: class-balanced samples of
        `EXPORT_SAMPLE` training and test images (`streaming.sample_views`),
        found without reading the splits."""
        calibration, test = (
            streaming.sample_views(
                records,
                EXPORT_SAMPLE,
                self.config.eval_batch_size,
                normalization=self.normalization,
            )
            for records in (self.dataset.train, self.dataset.test)
        )
        return calibration, to_numpy(test)
