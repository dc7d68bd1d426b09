"""Porting PyTorch weights (a `state_dict`) into zoo models.

`load_torch_state_dict(model, state_dict)` sets every weight of a zoo model from
the PyTorch reference's `state_dict`, given as NumPy arrays in PyTorch layout:
convolutions `OIHW` become `HWIO` (depthwise ones `(C * m, 1, k, k)` become
`(k, k, C, m)`), linear weights are transposed, BatchNorm's `weight`, `bias`,
`running_mean` and `running_var` become `gamma`, `beta`, `moving_mean` and
`moving_variance` (`num_batches_tracked` is ignored). The zoo models have the
reference padding, so the ported model gives the reference's logits on the same
images: channels-last here, preprocessed as for the reference (torchvision's
ImageNet weights: RGB in [0, 1], less the mean `(0.485, 0.456, 0.406)`, over the
standard deviation `(0.229, 0.224, 0.225)`; mdistiller's CIFAR-100 teachers:
RGB in [0, 1] less `(0.5071, 0.4867, 0.4408)` over `(0.2675, 0.2565, 0.2761)`,
which `tfds:cifar100` here applies).

The PyTorch names follow from the Keras layer names, by the model's name:

- `resnet18_imagenet`, `resnet34_imagenet`, `resnet50_imagenet`: torchvision's
  `resnet18`, `resnet34`, `resnet50` (its ImageNet `.pth` files);
- `mobilenetv1_imagenet`: mdistiller's ImageNet `MobileNetV1`;
- the 23 CIFAR models, as mdistiller's `models/cifar/*.py` (RepDistiller's)
  define them, under the names of its `cifar_model_dict`: `resnet8` ...
  `resnet110`, `resnet8x4`, `resnet32x4` (`resnet.py`); `resnet18`, `resnet50`
  (`ResNet18`, `ResNet50` of `resnetv2.py`); `wrn_16_1`, `wrn_16_2`, `wrn_40_1`,
  `wrn_40_2` (`wrn.py`); `vgg8` ... `vgg19` (the `vgg*_bn` of `vgg.py`);
  `mobilenetv2` (`MobileNetV2`: `mobile_half`, width 0.5);
  `shufflenetv1`, `shufflenetv2` (`ShuffleV1`, `ShuffleV2`).

Every one gives the reference's logits from the same seeded weights
(`tests/test_cifar_porting.py`, `tests/test_imagenet_zoo.py`).

The command line ports a checkpoint file into a `.keras` model; it needs PyTorch
(`pip install torch`) to read the file, nothing else here does. The file may
be a `state_dict` or a dict holding one under `"model"` (mdistiller's and
RepDistiller's `ckpt_epoch_240.pth`), `"state_dict"` or `"net"`; a `module.`
prefix on every key (`nn.DataParallel`) is dropped. The classes and image size
default to 100 and 32x32x3, or 1000 and 224x224x3 for the `*_imagenet` models:

```
python -m keras_cskd.models.porting \\
    --checkpoint=cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth \\
    --model=resnet32x4 --output=saved_models/cifar100_resnet32x4.keras
python -m keras_cskd.models.porting --checkpoint=resnet34.pth \\
    --model=resnet34_imagenet --output=teacher.keras
```
"""

import re
import sys

import keras
import numpy as np

from keras_cskd import cli, files

# (Keras layer name pattern, PyTorch module name) per layout, tried in order.
_RESNET = (
    (r"stem_conv", "conv1"),
    (r"stem_bn", "bn1"),
    (r"stage(\d+)_block(\d+)_(\d)_conv", r"layer\1.\2.conv\3"),
    (r"stage(\d+)_block(\d+)_(\d)_bn", r"layer\1.\2.bn\3"),
    (r"stage(\d+)_block(\d+)_shortcut_conv", r"layer\1.\2.downsample.0"),
    (r"stage(\d+)_block(\d+)_shortcut_bn", r"layer\1.\2.downsample.1"),
    (r"logits", "fc"),
)
# mdistiller's `resnetv2.py` (CIFAR resnet18 / resnet50): `shortcut`, `linear`.
_RESNET_V2 = tuple(
    (pattern, module.replace("downsample", "shortcut").replace("fc", "linear"))
    for pattern, module in _RESNET
)
# mdistiller's ImageNet MobileNetV1: `model[0]` the stem, `model[k]` block k.
_MOBILENET_V1 = (
    (r"stem_conv", "model.0.0"),
    (r"stem_bn", "model.0.1"),
    (r"block(\d+)_depthwise_conv", r"model.\1.0"),
    (r"block(\d+)_depthwise_bn", r"model.\1.1"),
    (r"block(\d+)_pointwise_conv", r"model.\1.3"),
    (r"block(\d+)_pointwise_bn", r"model.\1.4"),
    (r"logits", "fc"),
)
# mdistiller's CIFAR WRN: `block{s}.layer.{b}` pre-activation blocks whose
# `bn1` comes before `conv1` and `bn2` between the convolutions.
_WRN = (
    (r"stem_conv", "conv1"),
    (r"stage(\d+)_block(\d+)_pre_bn", r"block\1.layer.\2.bn1"),
    (r"stage(\d+)_block(\d+)_1_conv", r"block\1.layer.\2.conv1"),
    (r"stage(\d+)_block(\d+)_1_bn", r"block\1.layer.\2.bn2"),
    (r"stage(\d+)_block(\d+)_2_conv", r"block\1.layer.\2.conv2"),
    (r"stage(\d+)_block(\d+)_shortcut_conv", r"block\1.layer.\2.convShortcut"),
    (r"final_bn", "bn1"),
    (r"logits", "fc"),
)
# mdistiller's CIFAR VGG: `block{b}` is a Sequential of (conv, bn, relu) per
# conv, so conv `i` is entry `3 i` and its BatchNorm entry `3 i + 1`.
_VGG = (
    (r"block(\d+)_(\d+)_conv", lambda m: f"block{m[1]}.{3 * int(m[2])}"),
    (r"block(\d+)_(\d+)_bn", lambda m: f"block{m[1]}.{3 * int(m[2]) + 1}"),
    (r"logits", "classifier"),
)
# mdistiller's CIFAR MobileNetV2: `blocks[s - 1][b].conv` is the Sequential
# (expand conv, bn, relu, depthwise conv, bn, relu, project conv, bn).
_MOBILENET_V2_PARTS = {"expand": 0, "depthwise": 3, "project": 6}
_MOBILENET_V2 = (
    (r"stem_conv", "conv1.0"),
    (r"stem_bn", "conv1.1"),
    (
        r"stage(\d+)_block(\d+)_(expand|depthwise|project)_(conv|bn)",
        lambda m: (
            f"blocks.{int(m[1]) - 1}.{m[2]}.conv."
            f"{_MOBILENET_V2_PARTS[m[3]] + (m[4] == 'bn')}"
        ),
    ),
    (r"top_conv", "conv2.0"),
    (r"top_bn", "conv2.1"),
    (r"logits", "classifier.0"),
)
# mdistiller's CIFAR ShuffleNetV1: `layer{s}[b]` with conv1..3 and bn1..3.
_SHUFFLENET_V1 = (
    (r"stem_conv", "conv1"),
    (r"stem_bn", "bn1"),
    (r"stage(\d+)_block(\d+)_(\d)_(conv|bn)", r"layer\1.\2.\4\3"),
    (r"logits", "linear"),
)
# mdistiller's CIFAR ShuffleNetV2: `layer{s}[0]` the DownBlock (left branch
# conv1, conv2; right branch conv3, conv4, conv5), `layer{s}[b + 1]` block b.
_SHUFFLENET_V2_DOWN = {
    "left_1": 1,
    "left_2": 2,
    "right_1": 3,
    "right_2": 4,
    "right_3": 5,
}
_SHUFFLENET_V2 = (
    (r"stem_conv", "conv1"),
    (r"stem_bn", "bn1"),
    (
        r"stage(\d+)_down_((?:left|right)_\d)_(conv|bn)",
        lambda m: f"layer{m[1]}.0.{m[3]}{_SHUFFLENET_V2_DOWN[m[2]]}",
    ),
    (
        r"stage(\d+)_block(\d+)_(\d)_(conv|bn)",
        lambda m: f"layer{m[1]}.{int(m[2]) + 1}.{m[4]}{m[3]}",
    ),
    (r"top_conv", "conv2"),
    (r"top_bn", "bn2"),
    (r"logits", "linear"),
)
# Model name pattern -> layout.
_LAYOUTS = (
    (r"resnet(18|34|50)_imagenet", _RESNET),
    (r"resnet(8|14|20|32|44|56|110)|resnet(8|32)x4", _RESNET),
    (r"resnet(18|50)", _RESNET_V2),
    (r"mobilenetv1_imagenet", _MOBILENET_V1),
    (r"wrn_\d+_\d+", _WRN),
    (r"vgg\d+", _VGG),
    (r"mobilenetv2", _MOBILENET_V2),
    (r"shufflenetv1", _SHUFFLENET_V1),
    (r"shufflenetv2", _SHUFFLENET_V2),
)
_SUPPORTED = (
    "resnet{18,34,50}_imagenet, mobilenetv1_imagenet and the 23 CIFAR models "
    "(resnet8 ... resnet110, resnet8x4, resnet32x4, resnet18, resnet50, "
    "wrn_{16,40}_{1,2}, vgg{8,11,13,16,19}, mobilenetv2, shufflenetv1, shufflenetv2)"
)
_IGNORED_SUFFIX = ".num_batches_tracked"
_SHOWN = 3  # names listed in an error


def _layout(model):
    for pattern, layout in _LAYOUTS:
        if re.fullmatch(pattern, model.name):
            return layout
    raise ValueError(
        f"No PyTorch layout for a model named '{model.name}': porting knows "
        f"{_SUPPORTED} (built by keras_cskd.models.get, which names them)."
    )


def _module_name(layout, layer):
    for pattern, module in layout:
        match = re.fullmatch(pattern, layer.name)
        if match:
            return module(match) if callable(module) else match.expand(module)
    raise ValueError(
        f"Layer '{layer.name}' of {layer.__class__.__name__} has weights but no "
        "PyTorch counterpart in this model's layout."
    )


def _torch_weights(layer, module):
    """`[(PyTorch key, Keras variable, kind)]` for the weights of one layer."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (f"{module}.{key}", variable, "vector")
            for key, variable in (
                ("weight", layer.gamma),
                ("bias", layer.beta),
                ("running_mean", layer.moving_mean),
                ("running_var", layer.moving_variance),
            )
            if variable is not None
        ]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        pairs = [("weight", layer.kernel, "depthwise")]
    elif isinstance(layer, keras.layers.Conv2D):
        pairs = [("weight", layer.kernel, "conv")]
    elif isinstance(layer, keras.layers.Dense):
        pairs = [("weight", layer.kernel, "dense")]
    else:
        raise ValueError(
            f"Layer '{layer.name}' of {layer.__class__.__name__} has weights "
            "that porting does not know how to convert."
        )
    if layer.use_bias:
        pairs.append(("bias", layer.bias, "vector"))
    return [(f"{module}.{key}", variable, kind) for key, variable, kind in pairs]


def _torch_shape(kind, shape):
    """The PyTorch shape of a Keras weight of `kind` and `shape`."""
    if kind == "conv":  # (k, k, in / groups, out) <- (out, in / groups, k, k)
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "depthwise":  # (k, k, C, m) <- (C * m, 1, k, k)
        return (shape[2] * shape[3], 1, shape[0], shape[1])
    if kind == "dense":  # (in, out) <- (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _to_keras(kind, value, shape):
    """`value`, a PyTorch weight of `kind`, as the Keras weight of `shape`."""
    if kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))
    if kind == "depthwise":
        # PyTorch's output channel `c * m + j` is Keras' `[:, :, c, j]`.
        channels, multiplier = shape[2], shape[3]
        value = value.reshape(channels, multiplier, *value.shape[2:])
        return np.transpose(value, (2, 3, 0, 1))
    if kind == "dense":
        return np.transpose(value)
    return value


def _mapping(model):
    """`{PyTorch key: (Keras variable, kind)}`, in the order of `model.layers`."""
    layout = _layout(model)
    mapping = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        for key, variable, kind in _torch_weights(layer, _module_name(layout, layer)):
            mapping[key] = (variable, kind)
    return mapping


def torch_layout(model):
    """The PyTorch `state_dict` keys and shapes that `model` takes.

    Args:
        model: a zoo model of a layout porting knows (see the module docstring).

    Returns:
        A dict `{PyTorch key: PyTorch shape}` (BatchNorm's running statistics
        included, its `num_batches_tracked` not).

    Raises:
        ValueError: if porting has no layout for `model`.

    Example:

    >>> model = keras_cskd.models.get(  # doctest: +LARGE
    ...     "resnet18_imagenet", 1000, (224, 224, 3))
    >>> torch_layout(model)["layer1.0.conv1.weight"]
    (64, 64, 3, 3)
    """
    return {
        key: _torch_shape(kind, tuple(variable.shape))
        for key, (variable, kind) in _mapping(model).items()
    }


def load_torch_state_dict(model, state_dict):
    """Sets every weight of `model` from a PyTorch `state_dict`.

    All or nothing: the keys and shapes are checked before any weight is set.

    Args:
        model: a zoo model of a layout porting knows (see the module docstring),
            for example `keras_cskd.models.get("resnet34_imagenet", 1000,
            (224, 224, 3))`.
        state_dict: a mapping from PyTorch key to array in PyTorch layout, as
            `{k: v.numpy() for k, v in torch.load(path).items()}` gives.
            `num_batches_tracked` entries are ignored.

    Returns:
        `model`, its weights set.

    Raises:
        ValueError: one line, if porting has no layout for `model`, or a key of
            the model is missing from `state_dict`, a key of `state_dict` is not
            the model's, or an array has the wrong shape.

    Example:

    ```python
    import torch
    state_dict = torch.load("resnet34-b627a593.pth", weights_only=True)
    teacher = load_torch_state_dict(
        keras_cskd.models.get("resnet34_imagenet", 1000, (224, 224, 3)),
        {key: value.numpy() for key, value in state_dict.items()},
    )
    ```
    """
    mapping = _mapping(model)
    given = {k for k in state_dict if not str(k).endswith(_IGNORED_SUFFIX)}
    missing = [key for key in mapping if key not in given]
    if missing:
        raise ValueError(
            f"The state dict lacks {len(missing)} of the {len(mapping)} keys of "
            f"{model.name}: {_names(missing)}."
        )
    unexpected = sorted(str(key) for key in given - set(mapping))
    if unexpected:
        raise ValueError(
            f"The state dict has {len(unexpected)} keys that {model.name} does "
            f"not: {_names(unexpected)}."
        )
    values = {}
    for key, (variable, kind) in mapping.items():
        value = np.asarray(state_dict[key])
        expected = _torch_shape(kind, tuple(variable.shape))
        if value.shape != expected:
            raise ValueError(
                f"'{key}' has shape {value.shape} in the state dict but "
                f"{model.name} needs {expected} (for {variable.path})."
            )
        values[key] = _to_keras(kind, value, variable.shape)
    for key, (variable, _) in mapping.items():
        variable.assign(values[key].astype(variable.dtype))
    return model


def _names(keys):
    shown = ", ".join(f"'{key}'" for key in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def main(argv=None):
    """Ports a PyTorch checkpoint into a zoo model and saves it as `.keras`.

    `python -m keras_cskd.models.porting --checkpoint=resnet34.pth
    --model=resnet34_imagenet --output=teacher.keras`; needs PyTorch (`pip
    install torch`) to read the checkpoint. Errors follow `keras_cskd.cli`: one
    line on stderr and exit code 1.

    Args:
        argv: the arguments, without the program name; `sys.argv[1:]` if `None`.

    Returns:
        The exit code: 0 on success, 1 on an error.

    Example:

    ```python
    main(["--checkpoint=resnet34.pth", "--model=resnet34_imagenet",
          "--output=teacher.keras"])
    # returns 0, the exit code
    ```
    """
    args = _parser().parse_args(argv)
    try:
        _port(args)
    except (ValueError, OSError, ImportError) as error:
        return cli.report(error)
    print(f"Wrote {args.output}")
    return 0


def _parser():
    parser = cli.ArgumentParser(
        prog="python -m keras_cskd.models.porting",
        description="Port a PyTorch checkpoint (.pth: a state_dict, or a dict "
        "holding one under 'model', 'state_dict' or 'net', as mdistiller's and "
        "RepDistiller's teachers do) into a zoo model and save it as a .keras "
        "file. Needs PyTorch (pip install torch).",
    )
    parser.add_argument("--checkpoint", required=True, help="the .pth checkpoint")
    parser.add_argument("--model", required=True, help="the zoo model, e.g. resnet32x4")
    parser.add_argument("--output", required=True, help="the .keras file to write")
    parser.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="classes of the logits; default 1000 for the *_imagenet models, "
        "100 (CIFAR-100) for the others",
    )
    parser.add_argument(
        "--input_shape",
        default=None,
        help="height,width,channels of one image; default 224,224,3 for the "
        "*_imagenet models, 32,32,3 for the others",
    )
    return parser


def _defaults(args):
    """`(num_classes, input_shape)`: the given ones, else the model family's."""
    imagenet = args.model.endswith("_imagenet")
    num_classes = args.num_classes or (1000 if imagenet else 100)
    text = args.input_shape or ("224,224,3" if imagenet else "32,32,3")
    try:
        input_shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(
            f"--input_shape must be integers like 224,224,3, not '{text}'."
        ) from None
    return num_classes, input_shape


def _port(args):
    if not args.output.endswith(".keras"):
        raise ValueError(f"--output must end in .keras, not '{args.output}'.")
    num_classes, input_shape = _defaults(args)
    port_checkpoint(args.checkpoint, args.model, args.output, num_classes, input_shape)


def port_checkpoint(checkpoint, model_name, output, num_classes, input_shape):
    """Ports the PyTorch checkpoint file `checkpoint` into the zoo model
    `model_name` and saves it at `output` (a `.keras` path), atomically.

    What the command line does; needs PyTorch to read the file.

    Example:

    ```python
    port_checkpoint("resnet32x4_vanilla/ckpt_epoch_240.pth", "resnet32x4",
                    "resnet32x4.keras", 100, (32, 32, 3))
    ```
    """
    from keras_cskd.models import registry

    state_dict = _read_state_dict(checkpoint)
    import keras_cskd.models  # noqa: F401  (registers the zoo)

    model = registry.get(model_name, num_classes, tuple(input_shape))
    load_torch_state_dict(model, state_dict)
    # Written beside the output and moved onto it when complete: a full disk
    # or a kill leaves no truncated `.keras` file, and an earlier one intact.
    with files.atomic_path(output) as tmp:
        model.save(tmp)


def _read_state_dict(path):
    """The NumPy `state_dict` in the checkpoint file `path` (needs torch)."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading a PyTorch checkpoint needs PyTorch: pip install torch."
        ) from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"No such checkpoint: {path}.") from None
    except Exception as error:  # pickle, zip or torch errors: not a checkpoint
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint: {cli.one_line(error)}"
        ) from None
    state_dict = _unwrap(checkpoint, torch.Tensor)
    if state_dict is None:
        what = (
            f"a dict of {_names(sorted(map(str, checkpoint)))}"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise ValueError(
            f"{path} holds {what}, not a state_dict (names to tensors, itself or "
            f"under {_names(list(_WRAPPERS))}); save one with "
            "torch.save(model.state_dict(), path)."
        )
    # bfloat16 has no NumPy dtype; every zoo weight is float32.
    return {
        key: (value.float() if value.is_floating_point() else value).numpy()
        for key, value in state_dict.items()
    }


# Keys under which training scripts save the state_dict beside the epoch and the
# optimizer: mdistiller and RepDistiller use "model" (`ckpt_epoch_240.pth`).
_WRAPPERS = ("model", "state_dict", "net")
_PARALLEL_PREFIX = "module."  # what nn.DataParallel adds to every key


def _unwrap(checkpoint, tensor_type):
    """The state dict in `checkpoint`, `module.` prefixes removed; or `None`."""

    def is_state_dict(value):
        return (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(v, tensor_type) for v in value.values())
        )

    if not is_state_dict(checkpoint) and isinstance(checkpoint, dict):
        checkpoint = next(
            (checkpoint[k] for k in _WRAPPERS if is_state_dict(checkpoint.get(k))),
            checkpoint,
        )
    if not is_state_dict(checkpoint):
        return None
    if all(str(key).startswith(_PARALLEL_PREFIX) for key in checkpoint):
        return {key[len(_PARALLEL_PREFIX) :]: v for key, v in checkpoint.items()}
    return checkpoint


if __name__ == "__main__":
    sys.exit(main())
