"""The dataset registry: named sources of a `Dataset`, and `load(name)`.

A source module decorates its loader with `@register("name")`; importing the
module registers it (`keras_cskd.data` imports its own: digits, tfds, folder).
"""

import inspect

from keras_cskd.registry import Registry

DATASETS = Registry("dataset")


def register(name):
    """Registers a dataset loader under `name` (a decorator).

    `name` is a dataset (`"digits"`) or a family of them,
    `"<prefix>:<argument>"` (`"tfds:<name>"`, `"folder:<path>"`): then
    `load("tfds:cifar10")` calls the family's loader with `"cifar10"`.

    The loader contract: the loader is called with the argument (families
    only), those of `data_dir`, `download`, `validation_fraction` and `seed`
    it names as parameters (the others are not passed; a nonzero
    `validation_fraction` to a loader without that parameter is refused), and
    the source's own `**options` (`image_size`, `streaming`, ...). It returns
    a `keras_cskd.data.Dataset` of unbatched `(image, label)` splits: float32
    images of `input_shape`, int32 labels in `[0, num_classes)`, `validation`
    possibly `None`. It raises one-line errors for a missing or unprepared
    source, saying how to fix it.

    Example:

    >>> from keras_cskd.data import Dataset
    >>> @register("noise")
    ... def load_noise(seed=0):
    ...     images = np.random.default_rng(seed).random((30, 4, 4, 1), "float32")
    ...     labels = np.arange(30, dtype="int32") % 3
    ...     split = tf.data.Dataset.from_tensor_slices((images, labels))
    ...     return Dataset("noise", split, split, split, 3, (4, 4, 1))
    >>> keras_cskd.data.load("noise").num_classes
    3
    """
    prefix = _prefix(name)
    clash = [known for known in DATASETS.names() if _prefix(known) == prefix]
    if clash and clash != [name]:
        raise ValueError(
            f"A dataset named '{clash[0]}' is already registered, which '{name}' "
            "would shadow: choose another name."
        )
    return DATASETS.register(name)


def names():
    """The dataset names and families `load` understands, e.g. `"tfds:<name>"`."""
    return DATASETS.names()


def load(
    name, data_dir=None, download=False, validation_fraction=0.0, seed=0, **options
):
    """Loads a named dataset.

    Args:
        name: a registered name (see `names()`), among them
            - `"digits"`: scikit-learn's bundled 8x8 handwritten digits (real
              data, no download), 10 classes, images scaled to [0, 1] as
              `[8, 8, 1]`, split 70/15/15 (stratified, fixed seed; it has its
              own validation split, so a `validation_fraction` is refused).
            - `"tfds:<name>[/<config>][:<version>][:<splits>]"`: a TensorFlow
              Datasets image classification dataset, e.g. `"tfds:cifar100"`
              or `"tfds:cifar10:train[:10%],test=test[:5%]"` (see
              `keras_cskd.data.tfds`).
            - `"folder:<path>"`: a folder of `<split>/<class>/<image>` files
              (see `keras_cskd.data.folder`).
        data_dir: the TFDS data directory (TFDS datasets only).
        download: let TFDS download and prepare a missing dataset (TFDS
            datasets only). Without it nothing is downloaded.
        validation_fraction: for TFDS datasets and folders without their own
            validation split, the fraction of the training split held out
            for validation; `0` means no validation split.
        seed: the seed of a folder's validation carve.
        **options: passed on to the source's loader: `normalization` and
            `image_size` (TFDS), `image_size` (folders).

    Returns:
        A `Dataset` of unbatched `(image, label)` splits.

    Raises:
        ValueError: for an unknown name, options or a `validation_fraction`
            given to `digits`, or a source's own errors (see `tfds.load` and
            `folder.load`).
        TypeError: for options the source does not take.
        FileNotFoundError: for an unprepared TFDS dataset or a missing folder.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> digits.num_classes, digits.input_shape
    (10, (8, 8, 1))
    """
    loader, arguments = _loader(name)
    parameters = inspect.signature(loader).parameters
    if validation_fraction and "validation_fraction" not in parameters:
        raise ValueError(
            f"The {name} dataset takes no validation_fraction, so "
            f"validation_fraction={validation_fraction} would be ignored: leave "
            "it at 0 (train.py: data.validation_fraction)."
        )
    given = dict(
        data_dir=data_dir,
        download=download,
        validation_fraction=validation_fraction,
        seed=seed,
    )
    shared = {key: value for key, value in given.items() if key in parameters}
    return loader(*arguments, **shared, **options)


def _loader(name):
    """The loader of `name` and the arguments it takes from the name."""
    prefix, colon, argument = str(name).partition(":")
    families = {_prefix(key): key for key in DATASETS.names() if ":" in key}
    if colon and prefix in families:
        return DATASETS.get(families[prefix]), (argument,)
    if not colon and prefix in families:
        raise ValueError(
            f"The dataset '{name}' needs its argument: '{families[prefix]}'."
        )
    return DATASETS.get(name), ()


def _prefix(name):
    return str(name).partition(":")[0]
